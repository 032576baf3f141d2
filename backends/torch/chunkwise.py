"""The chunkwise algorithm for matrix-state recurrences, in portable torch.

Stage: backend (torch). Runs a `ChunkPlan` (recc.lowering.chunk):

  S_t = S_{t-1} M_t + B_t,  M_t = diag(d_t) + U_t W_t^T,  B_t = P_t Q_t^T,  o_t = S_t p_t

per batch (and head), S[rows, cols]. The sequence is cut into chunks of L steps.
Within a chunk everything is linear in the state S_0 entering it, so one pass
over all chunks at once computes, from the chunk's own inputs alone,

  E, F         the chunk's map:       S_L = S_0 E + F
  Omega, Theta its outputs' map:      o_t = S_0 Omega[:, t] + Theta[:, t]

(for rank R > 0 through one triangular solve of L*R unknowns per chunk, the
WY/UT representation of the chunk's product of M_t), then a short sequential
pass carries the state from chunk to chunk (one [rows, cols] state per chunk),
and one batched product gives every output. The derivation, with every symbol
used here, is docs/lowering-chunkwise.md. Decay products within a chunk are
exact cumulative products (no logarithms, no division), so decays of 0 and
negative decays are exact. Gradients come from torch autograd through these ops.
"""

from __future__ import annotations

import math

import torch

from recc.backends.torch.decays import (
    decayed,
    prefix_products,
    segment_products,
    suffix_products,
)
from recc.interpreter import TorchOps
from recc.ir.evaluate import align, evaluate
from recc.ir.nodes import Expr
from recc.lowering import ChunkPlan
from recc.signature import Bound


class _Steps:
    """Coefficients of every step at once, as `[N, T, *dims]` with N = batch x heads."""

    def __init__(self, plan: ChunkPlan, bound: Bound) -> None:
        self.bound = bound
        self.ops = TorchOps(bound.compute_dtype, bound.device)
        env = dict(bound.params)
        env.update(bound.inputs)
        for let in plan.state_free_lets:
            env[let.name] = evaluate(let.expr, env, self.ops)
        self.env = env
        self.memo: dict = {}
        self.n = bound.B * (bound.batch_heads[0] if bound.batch_heads else 1)

    def of(self, expr: Expr, dims: tuple[str, ...]) -> torch.Tensor:
        key = (expr, dims)
        if key not in self.memo:  # the same expression in two places is computed once
            self.memo[key] = self._of(expr, dims)
        return self.memo[key]

    def _of(self, expr: Expr, dims: tuple[str, ...]) -> torch.Tensor:
        b = self.bound
        value = align(evaluate(expr, self.env, self.ops), expr.dims, dims)
        value = torch.broadcast_to(value, (b.B, b.T, *b.batch_heads, *b.shape_of(dims)))
        if b.batch_heads:
            value = value.movedim(2, 1)  # [B, H, T, ...]
        return value.reshape(self.n, b.T, *b.shape_of(dims))

    def stacked(self, exprs: list[Expr | None], dims: tuple[str, ...]) -> torch.Tensor:
        """`[N, T, *dims, len(exprs)]` (an empty last axis for no expressions; zeros
        for a None)."""
        b = self.bound
        if not exprs:
            shape = (self.n, b.T, *b.shape_of(dims), 0)
            return torch.zeros(shape, dtype=b.compute_dtype, device=b.device)
        zero = torch.zeros((self.n, b.T, *b.shape_of(dims)), dtype=b.compute_dtype, device=b.device)
        columns = [zero if e is None else self.of(e, dims) for e in exprs]
        return columns[0].unsqueeze(-1) if len(columns) == 1 else torch.stack(columns, dim=-1)

    def scales(self, plan: ChunkPlan) -> torch.Tensor:
        """Cw `[N, T, R, M]`: how much of x_r = S_{t-1} u_r write m carries (0 if none)."""
        b = self.bound
        zero = torch.zeros((self.n, b.T), dtype=b.compute_dtype, device=b.device)
        table = [[zero] * len(plan.writes) for _ in plan.reads]
        for m, w in enumerate(plan.writes):
            for r, scale in w.from_reads:
                table[r][m] = zero + 1.0 if scale is None else self.of(scale, ())
        if not plan.reads or not plan.writes:
            return torch.zeros(
                (self.n, b.T, len(plan.reads), len(plan.writes)),
                dtype=zero.dtype,
                device=zero.device,
            )
        return torch.stack([torch.stack(row, dim=-1) for row in table], dim=-2)


def _pad(x: torch.Tensor, steps: int, value: float) -> torch.Tensor:
    """x `[N, T, ...]` with `steps` more steps of `value` (the identity's coefficient)."""
    if steps == 0:
        return x
    fill = torch.full((x.shape[0], steps, *x.shape[2:]), value, dtype=x.dtype, device=x.device)
    return torch.cat([x, fill], dim=1)


class _Layout:
    """Where each step sits once the sequences are cut into whole chunks of L steps.

    Every sequence (the one of each batch row, or each of `cu_seqlens`' packed ones)
    gets its own chunks, at least one, so no chunk straddles two sequences; a
    sequence's last chunk is filled with identity steps (decay 1, nothing written or
    read: step T of the coefficients, one identity step appended). `index[p]`: the
    step at chunked position p; `chunks[i]`: sequence i's chunks, a range."""

    def __init__(self, T: int, L: int, offsets: tuple[int, ...], device) -> None:
        pieces, self.chunks, first = [], [], 0
        for a, b in zip(offsets, offsets[1:]):
            n = max(1, -(-(b - a) // L))
            step = torch.arange(a, a + n * L, device=device)
            pieces.append(torch.where(step < b, step, T))  # past the end: the identity
            self.chunks.append(range(first, first + n))
            first += n
        self.nc = first
        self.index = torch.cat(pieces)
        # where each real step went: its position among the chunked ones
        self.position = torch.nonzero(self.index < T).squeeze(-1)
        self.padded = bool(self.nc * L != T)


def run_chunkwise(plan: ChunkPlan, bound: Bound, chunk: int | None = None):
    """(outputs `[B, T, (H), *dims]`, final states `[B, (H), rows, cols]`; with
    `bound.cu_seqlens`, `[N, (H), rows, cols]`, one per packed sequence)."""
    rec, b = plan.spec, bound
    L = chunk or plan.chunk
    steps = _Steps(plan, bound)
    rows, cols = plan.rows, plan.cols
    Rw, C = b.sizes[rows], b.sizes[cols]
    n_heads = b.batch_heads[0] if b.batch_heads else 1
    N, T = b.B * n_heads, b.T
    # [sequences, N, Rw, C]: one sequence per batch row, or packed ones in batch 1
    n_seq = 1 if b.cu_seqlens is None else b.sequences
    S0 = b.initial_state[plan.state]
    if plan.transposed:  # the plan is of S^T: the spec stores S as [cols, rows]
        S0 = S0.transpose(-1, -2)
    S0 = torch.broadcast_to(S0, (b.sequences, *b.batch_heads, Rw, C)).reshape(n_seq, N, Rw, C)

    width = math.prod(b.shape_of(plan.decay.dims))  # 1 (a scalar decay) or C
    d = steps.of(plan.decay, plan.decay.dims).reshape(N, T, width)  # [N, T, 1 or C]
    U = steps.stacked(list(plan.reads), (cols,))  # [N, T, C, R]: x_r = S_{t-1} u_r
    Edir = steps.stacked([w.direction for w in plan.writes], (cols,))  # [N, T, C, M]
    P = steps.stacked([w.inject for w in plan.writes], (rows,))  # [N, T, Rw, M]
    if plan.companions:  # each companion vector state is one more row of S
        P = torch.cat(
            [P, *(steps.stacked(list(c.scales), ()).unsqueeze(2) for c in plan.companions)], dim=2
        )
        S0 = torch.cat(
            [S0, *(_rows(b.initial_state[c.state], b, n_seq, N, C) for c in plan.companions)],
            dim=-2,
        )
    Rs = P.shape[2]  # rows of S, companions included
    Cw = steps.scales(plan)  # [N, T, R, M]: y_m = sum_r Cw[r, m] x_r + P[:, m]
    probes = [p for r in plan.readouts for p in r.probes]
    G = steps.stacked([p.probe for p in probes], (cols,))  # [N, T, C, O]
    R, M, O = U.shape[-1], Edir.shape[-1], G.shape[-1]

    # Cut into whole chunks per sequence, padded with identity steps (d = 1, nothing
    # written, nothing read); packed sequences get chunks of their own.
    offsets = b.cu_seqlens if b.cu_seqlens is not None else (0, T)
    layout = _Layout(T, L, offsets, b.device)
    nc = layout.nc

    def chunked(x: torch.Tensor, identity: float) -> torch.Tensor:
        if layout.padded:
            x = _pad(x, 1, identity).index_select(1, layout.index)
        return x.reshape(N, nc, L, *x.shape[2:])

    d, U, Edir, P, Cw, G = (
        chunked(x, v) for x, v in ((d, 1.0), (U, 0.0), (Edir, 0.0), (P, 0.0), (Cw, 0.0), (G, 0.0))
    )

    # ---- every chunk at once: its map, linear in the state S_0 entering it ----
    # decays from the chunk's start, and to its end (products, as in `decayed`)
    gamma_cur = prefix_products(d, inclusive=True)  # [t] = prod_{k <= t} d_k
    gamma_prev = prefix_products(d, inclusive=False)  # [t] = prod_{k < t} d_k
    gamma_end = gamma_cur[..., L - 1, :]  # the whole chunk
    rho_end = suffix_products(d)  # [s] = prod_{s < k <= L} d_k

    # What step s's writes y_{s,m} e_{s,m}^T reach, decayed: the state step t's reads
    # see (K), and the chunk's last state and every output (reach).
    table = segment_products(d) if d.shape[-1] == 1 else None  # scalar: shared below
    K = decayed(Edir, d, U, strict=True, table=table)  # [(s, m), (t, r)]
    reach = torch.cat(
        [
            (Edir * rho_end[..., None]).movedim(-1, -2).reshape(N, nc, L * M, C),
            decayed(Edir, d, G, strict=False, table=table),
        ],
        dim=-1,
    )  # [(s, m), C + (t, o)]
    Pf = P.movedim(-2, -3).reshape(N, nc, Rs, L * M)  # [Rs, (s, m)]
    # [E | Omega] (top, C rows) and [F | Theta] (bottom, Rs rows): S_L = S_0 E + F and
    # o_t = S_0 Omega[:, t] + Theta[:, t]
    Omega0 = (gamma_cur[..., None] * G).movedim(-3, -2).reshape(N, nc, C, L * O)
    top = torch.cat([torch.diag_embed(gamma_end.expand(N, nc, C)), Omega0], dim=-1)
    if R > 0:
        # x_t = S_0 (gamma_{t-1} U_t) + sum_{s<t} y_s K[s, t] with y_s = x_s Cw_s + P_s:
        # a unit triangular system X (I - A) = S_0 Phi0 + P K, A = Cw K strictly
        # block-upper (x_t reads the x_s of steps s < t only)
        def by_reads(x: torch.Tensor) -> torch.Tensor:  # [(s, m), n] -> [(s, r), n]
            x = x.reshape(N, nc, L, M, x.shape[-1])
            return torch.einsum("...srm,...smn->...srn", Cw, x).reshape(N, nc, L * R, -1)

        A = by_reads(K)  # [(s, r'), (t, r)]
        Phi0 = (gamma_prev[..., None] * U).movedim(-3, -2).reshape(N, nc, C, L * R)
        eye = torch.eye(L * R, dtype=A.dtype, device=A.device)
        # (I - A)^{-1} applied to what the x's reach (X itself is never formed). The
        # inverse of a unit triangular matrix, then a product: faster here than one
        # solve with all of `reach` as its right-hand side.
        inverse = torch.linalg.solve_triangular(eye - A, eye, upper=True, unitriangular=True)
        Mx = inverse @ by_reads(reach)
        top = top + Phi0 @ Mx
        reach = reach + K @ Mx
    bottom = Pf @ reach
    E, Omega = top[..., :C], top[..., C:]
    F, Theta = bottom[..., :C], bottom[..., C:]

    # ---- chunk to chunk: the state entering each chunk ----
    # each sequence from its own initial state; its final state after its last chunk
    entering = []
    finals = []
    # unbound once: indexing chunk k out of E and F per step would cost autograd a
    # full-size zero-filled gradient per index; unbind's backward stacks once
    Es, Fs = E.unbind(1), F.unbind(1)
    for i, chunks in enumerate(layout.chunks):
        S = S0[i]
        for k in chunks:
            entering.append(S)
            S = S @ Es[k] + Fs[k]
        finals.append(S)
    ends = torch.stack(finals).reshape(b.sequences, *b.batch_heads, Rs, C)
    final = ends[..., :Rw, :]
    if plan.transposed:
        final = final.transpose(-1, -2).contiguous()
    finals_by_name = {plan.state: final}
    for j, c in enumerate(plan.companions):
        finals_by_name[c.state] = ends[..., Rw + j, :]

    # every probe's value, [B, T, (H), Rw] (of S) or [B, T, (H)] (of a companion)
    values = {}
    if probes:
        Sk = torch.stack(entering, dim=1)  # [N, nc, Rs, C]
        o = (Sk @ Omega + Theta).reshape(N, nc, Rs, L, O).movedim(2, 3)
        o = o.reshape(N, nc * L, Rs, O)
        if layout.padded:  # back to the steps' own order, padding dropped
            o = o.index_select(1, layout.position)  # [N, T, Rs, O]
        o = o.reshape(b.B, *b.batch_heads, T, Rs, O)
        if b.batch_heads:
            o = o.movedim(2, 1)  # [B, T, H, Rs, O]
        companion_row = {c.state: Rw + j for j, c in enumerate(plan.companions)}
        for i, p in enumerate(probes):
            row = companion_row.get(p.companion)
            values[p.name] = o[..., :Rw, i] if row is None else o[..., row, i]
    outputs = {}
    env = {**steps.env, **values}
    for r in plan.readouts:
        dims = next(o.expr.dims for o in rec.outputs if o.name == r.name)
        shape = (b.B, T, *b.batch_heads, *b.shape_of(dims))
        if r.expr is None:  # an output that is 0
            value = torch.zeros(shape, dtype=b.compute_dtype, device=b.device)
        else:
            value = align(evaluate(r.expr, env, steps.ops), r.expr.dims, dims)
        outputs[r.name] = torch.broadcast_to(value, shape).to(b.out_dtype)
    return outputs, finals_by_name


def _rows(n0: torch.Tensor, b: Bound, n_seq: int, N: int, C: int) -> torch.Tensor:
    """A companion's initial state `[sequences, (H), C]` as one row, `[n_seq, N, 1, C]`."""
    return torch.broadcast_to(n0, (b.sequences, *b.batch_heads, C)).reshape(n_seq, N, 1, C)
