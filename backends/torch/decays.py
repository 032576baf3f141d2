"""Decay products within a chunk, for the chunkwise algorithm (backends/torch/chunkwise.py).

Stage: backend (torch). Every product of decays over a segment of steps is a product,
never a quotient or an exponential of log sums, so decays of 0, negative ones and long
runs of tiny ones stay exact. `decayed` is the one costly piece: the decayed
interaction matrix between the steps of a chunk (docs/lowering-chunkwise.md).
"""

from __future__ import annotations

import torch


def segment_products(d: torch.Tensor) -> torch.Tensor:
    """rho[..., t, s, :] = prod_{s < i <= t} d_i for t >= s (1 at t = s), 0 for t < s,
    with t and s in 0..L (0: the chunk's start), from `d` `[..., L, c]` (steps 1..L).

    A cumulative product down each column of a lower-triangular arrangement of d:
    exact for any decay (0, negative, subnormal), no logarithm and no division."""
    L, c = d.shape[-2], d.shape[-1]
    lead = d.shape[:-2]
    dd = torch.cat([torch.ones((*lead, 1, c), dtype=d.dtype, device=d.device), d], dim=-2)
    idx = torch.arange(L + 1, device=d.device)
    below = (idx[:, None] > idx[None, :])[..., None]  # t > s
    grid = torch.where(below, dd.unsqueeze(-2).expand(*lead, L + 1, L + 1, c), 1.0)
    rho = torch.cumprod(grid, dim=-3)
    return torch.where((idx[:, None] >= idx[None, :])[..., None], rho, 0.0)


# Steps per block when a decay over columns is factored within a chunk (below); a chunk
# whose length it does not divide is one block.
BLOCK = 16


def prefix_products(d: torch.Tensor, inclusive: bool) -> torch.Tensor:
    """prod_{k <= i} d_k (inclusive) or prod_{k < i} d_k along axis -2 of `[..., L, c]`."""
    p = torch.cumprod(d, dim=-2)
    if inclusive:
        return p
    return torch.cat([torch.ones_like(p[..., :1, :]), p[..., :-1, :]], dim=-2)


def suffix_products(d: torch.Tensor) -> torch.Tensor:
    """prod_{k > i} d_k along axis -2 of `[..., L, c]` (1 at the last step)."""
    return prefix_products(d.flip(-2), inclusive=False).flip(-2)


def decayed(left: torch.Tensor, d: torch.Tensor, right: torch.Tensor, strict: bool) -> torch.Tensor:
    """D[..., (s, a), (t, b)] = sum_c left[..., s, c, a] * rho[..., s, t, c] * right[..., t, c, b]
    for steps s, t in 1..L of a chunk: what step s's write (right factor `left`) gives
    at step t through `right`, decayed from s to t, laid out as a matrix from (s, a) to
    (t, b). rho = prod_{s < k <= t} d_k over s <= t, or if `strict` prod_{s < k < t} d_k
    over s < t (what step t's read of S_{t-1} sees); 0 elsewhere. `d`: `[..., L, 1 or C]`.

    Every rho is a product of decays, never a quotient or an exponential of log sums,
    so decays of 0, negative ones and long runs of tiny ones stay exact. A scalar decay
    is one matrix product, then the [L, L] table of segment products. A decay over the
    columns is factored through blocks of BLOCK steps: for s in block j before t's
    block i, rho = (to j's end from s) * (over the blocks between) * (from i's start to
    t), so block pair (i, j) is one matrix product of decay-scaled factors; within a
    block the [l, l, C] table of segment products is used as is."""
    *lead, L, C, a = left.shape
    b = right.shape[-1]
    if a == 0 or b == 0:  # nothing read (rank 0) or nothing written: no table to build
        return torch.zeros((*lead, L * a, L * b), dtype=left.dtype, device=left.device)
    if d.shape[-1] == 1:  # a scalar decay: one matrix product, then the decays
        rho = segment_products(d)  # [..., L+1, L+1, 1] over positions 0..L
        rho = rho[..., :L, 1:, 0] if strict else rho[..., 1:, 1:, 0]  # [t, s]
        rows = left.movedim(-1, -2).reshape(*lead, L * a, C)
        cols = right.movedim(-3, -2).reshape(*lead, C, L * b)
        decays = rho.transpose(-1, -2)[..., :, None, :, None]  # [s, 1, t, 1]
        return ((rows @ cols).reshape(*lead, L, a, L, b) * decays).reshape(*lead, L * a, L * b)
    l = BLOCK if L % BLOCK == 0 else L
    nb = L // l
    blocks = lambda x: x.reshape(*lead, nb, l, *x.shape[len(lead) + 1 :])  # noqa: E731
    db, lb, rb = blocks(d), blocks(left), blocks(right)  # [..., nb, l, C(, a|b)]
    # within each block: the segment products themselves
    within = segment_products(db)  # [..., nb, l+1, l+1, C]
    within = within[..., :l, 1:, :] if strict else within[..., 1:, 1:, :]  # [t, s]
    diagonal = torch.einsum("...sca,...tsc,...tcb->...satb", lb, within, rb)
    diagonal = diagonal.reshape(*lead, nb, l * a, l * b)
    if nb == 1:
        return diagonal.reshape(*lead, L * a, L * b)
    # between blocks: rho = suffix(s) * between(i, j) * prefix(t)
    to_end = suffix_products(db)  # [..., j, x, C]: prod over (s, end of j]
    from_start = prefix_products(db, inclusive=not strict)  # [..., i, y, C]
    totals = torch.prod(db, dim=-2)  # [..., nb, C]
    between = segment_products(totals)[..., :nb, 1:, :]  # [i, j] = prod_{j < m < i}: 0 if j >= i
    sources = (lb * to_end[..., None]).movedim(-1, -2)  # [..., j, x, a, C]
    targets = rb * from_start[..., None]  # [..., i, y, C, b]
    scaled = sources[..., None, :, :, :, :] * between[..., :, :, None, None, :]  # [i, j, x, a, C]
    off = scaled.reshape(*lead, nb, nb * l * a, C) @ targets.reshape(*lead, nb, l, C, b).movedim(
        -3, -2
    ).reshape(*lead, nb, C, l * b)  # [..., i, (j, x, a), (y, b)]
    off = off.reshape(*lead, nb, nb, l * a, l * b).transpose(-4, -3)  # [..., j, i, xa, yb]
    j = torch.arange(nb, device=d.device)
    before = (j[:, None] < j[None, :])[:, :, None, None]  # source block j before target i
    same = (j[:, None] == j[None, :])[:, :, None, None]
    full = torch.where(before, off, 0.0)
    full = torch.where(same, diagonal.unsqueeze(-3), full)  # [..., j, i, xa, yb]
    return full.transpose(-3, -2).reshape(*lead, L * a, L * b)
