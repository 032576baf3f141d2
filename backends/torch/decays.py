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


# A decay over columns: a chunk is halved while its length is even and above BLOCK; the
# pieces left (BLOCK steps for a chunk of BLOCK * 2^k) are the blocks of `decayed`.
BLOCK = 8


def prefix_products(d: torch.Tensor, inclusive: bool) -> torch.Tensor:
    """prod_{k <= i} d_k (inclusive) or prod_{k < i} d_k along axis -2 of `[..., L, c]`."""
    p = torch.cumprod(d, dim=-2)
    if inclusive:
        return p
    return torch.cat([torch.ones_like(p[..., :1, :]), p[..., :-1, :]], dim=-2)


def suffix_products(d: torch.Tensor) -> torch.Tensor:
    """prod_{k > i} d_k along axis -2 of `[..., L, c]` (1 at the last step)."""
    return prefix_products(d.flip(-2), inclusive=False).flip(-2)


def _within_blocks(
    left: torch.Tensor, d: torch.Tensor, right: torch.Tensor, strict: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`decayed` within blocks of l steps: `left` `[..., l, a, C]`, `d` `[..., l, C]`,
    `right` `[..., l, C, b]` give (D `[..., l a, l b]`, the sources decayed to the
    block's end `[..., l, a, C]`, the prefix products prod_{k <= t} d_k `[..., l, C]`).

    A loop over the block's steps t carries what every earlier step's write has become,
    reach_t[s] = left[s] * prod_{s < k <= t} d_k for s <= t: reach_t = (reach_{t-1} * d_t,
    then left[t] appended), one multiplication per entry. Column t of D is reach_t (or,
    if strict, reach_{t-1}) against right[t], summed over C; the columns are packed
    one after another and put in place by one gather. The last reach is the sources
    the blocks after this one see."""
    *batch, l, a, C = left.shape
    b = right.shape[-1]
    lefts, decays, rights = left.unbind(-3), d.unbind(-2), right.mT.unbind(-3)
    zero = left.new_zeros((1, *batch, a, b))
    columns = [zero]  # packed[1 + position of (s, t)] = D[s, t]; packed[0] = 0
    reach = None  # reach_{t-1}: [t, ..., a, C], steps first (appending copies whole rows)
    prefix = []
    for t in range(l):
        reads = reach
        if reach is None:
            reach, through = lefts[0][None], decays[0]
        else:
            reach = torch.cat([reach * decays[t][..., None, :], lefts[t][None]], dim=0)
            through = through * decays[t]
        prefix.append(through)
        if not strict:
            reads = reach
        if reads is not None:  # [s, ..., a, b] for s <= t (< t if strict)
            columns.append((reads.unsqueeze(-2) * rights[t].unsqueeze(-3)).sum(-1))
    s, t = torch.arange(l, device=d.device)[:, None], torch.arange(l, device=d.device)
    if strict:
        position = torch.where(s < t, t * (t - 1) // 2 + s + 1, 0)
    else:
        position = torch.where(s <= t, t * (t + 1) // 2 + s + 1, 0)
    D = torch.cat(columns, dim=0)[position.flatten()].reshape(l, l, *batch, a, b)
    D = D.permute(*range(2, len(batch) + 2), 0, -2, 1, -1)  # [..., s, a, t, b]
    return D.reshape(*batch, l * a, l * b), reach.movedim(0, -3), torch.stack(prefix, dim=-2)


def decayed(
    left: torch.Tensor,
    d: torch.Tensor,
    right: torch.Tensor,
    strict: bool,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """D[..., (s, a), (t, b)] = sum_c left[..., s, c, a] * rho[..., s, t, c] * right[..., t, c, b]
    for steps s, t in 1..L of a chunk: what step s's write (right factor `left`) gives
    at step t through `right`, decayed from s to t, laid out as a matrix from (s, a) to
    (t, b). rho = prod_{s < k <= t} d_k over s <= t, or if `strict` prod_{s < k < t} d_k
    over s < t (what step t's read of S_{t-1} sees); 0 elsewhere. `d`: `[..., L, 1 or C]`.

    Every rho is a product of decays, never a quotient or an exponential of log sums,
    so decays of 0, negative ones and long runs of tiny ones stay exact. A scalar decay
    is one matrix product, then the [L, L] table of segment products.

    A decay over the columns: the chunk is halved while its length is even and above
    BLOCK, down to blocks of l steps. Within a block, `_within_blocks` forms each rho as
    a running product (no [l, l, C] table). Between the two halves A, B of a segment,
    for s in A and t in B, rho = prod_{s < k <= end of A} * prod_{start of B <= k <= t}
    (< t if strict): the block of D from A to B is one matrix product, sources[s] @
    targets[t]^T over C, with sources = left * (decay to A's end) and targets = right *
    (decay from B's start). Going a level up, a segment's sources in its first half take
    one more factor, the product over its second half, and its targets in the second half
    the product over the first: each factor is a product over disjoint steps, so each
    term of D is a product of the decays of its own segment. Per chunk (a = b = 1) this
    is about L^2 C / 2 multiply-adds in matrix products and L C (l + 2 log2(L / l))
    elementwise products, on tensors of about L C entries at most, so that what autograd
    keeps for the backward pass is as small (the [l, l, C] tables it replaces, built
    by where and cumprod, dominated the time of GLA forward and backward)."""
    *lead, L, C, a = left.shape
    b = right.shape[-1]
    if a == 0 or b == 0:  # nothing read (rank 0) or nothing written: no table to build
        return torch.zeros((*lead, L * a, L * b), dtype=left.dtype, device=left.device)
    if d.shape[-1] == 1:  # a scalar decay: one matrix product, then the decays
        # [..., L+1, L+1, 1] over positions 0..L (`table`: segment_products(d), made once
        # by a caller that needs both the strict and the inclusive D)
        rho = segment_products(d) if table is None else table
        rho = rho[..., :L, 1:, 0] if strict else rho[..., 1:, 1:, 0]  # [t, s]
        rows = left.movedim(-1, -2).reshape(*lead, L * a, C)
        cols = right.movedim(-3, -2).reshape(*lead, C, L * b)
        decays = rho.transpose(-1, -2)[..., :, None, :, None]  # [s, 1, t, 1]
        return ((rows @ cols).reshape(*lead, L, a, L, b) * decays).reshape(*lead, L * a, L * b)
    l, levels = L, 0
    while l % 2 == 0 and l > BLOCK:
        l, levels = l // 2, levels + 1
    nb = L // l  # 2^levels blocks
    blocks = lambda x: x.reshape(*lead, nb, l, *x.shape[len(lead) + 1 :])  # noqa: E731
    db, rb = blocks(d), blocks(right)  # [..., nb, l, C], [..., nb, l, C, b]
    D, sources, prefix = _within_blocks(blocks(left.movedim(-1, -2)), db, rb, strict)
    totals = prefix[..., -1, :]  # [..., nb, C]: the product over each block
    if strict:  # prod_{start <= k < t}
        prefix = torch.cat([torch.ones_like(prefix[..., :1, :]), prefix[..., :-1, :]], dim=-2)
    targets = (rb * prefix[..., None]).mT  # [..., nb, l, b, C]
    h = l  # steps in each half of the segments of this level
    for level in range(levels):
        n = nb >> (level + 1)  # segments, each two halves of h steps
        sources_a, sources_b = sources.reshape(*lead, n, 2, h, a, C).unbind(-4)
        targets_a, targets_b = targets.reshape(*lead, n, 2, h, b, C).unbind(-4)
        across = sources_a.reshape(*lead, n, h * a, C) @ targets_b.reshape(*lead, n, h * b, C).mT
        D_a, D_b = D.reshape(*lead, n, 2, h * a, h * b).unbind(-3)
        D = torch.cat(
            [torch.cat([D_a, across], dim=-1), torch.cat([torch.zeros_like(across), D_b], dim=-1)],
            dim=-2,
        )  # [..., n, 2h a, 2h b]
        if level + 1 < levels:
            total_a, total_b = totals.reshape(*lead, n, 2, C).unbind(-2)
            sources = torch.cat([sources_a * total_b[..., None, None, :], sources_b], dim=-3)
            targets = torch.cat([targets_a, targets_b * total_a[..., None, None, :]], dim=-3)
            totals = total_a * total_b
        h *= 2
    return D.reshape(*lead, L * a, L * b)
