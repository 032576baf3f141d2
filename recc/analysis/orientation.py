"""A matrix state read the other way round: the recurrence for S^T.

Stage: analysis. The DPLR form (recc.analysis.dplr) is S' = S @ M + B, a right
factor: the rows of S evolve independently. Specs written the way
flash-linear-attention stores its states, S[K, V] with left updates
(`S = S - outer(k, beta * (S.T @ k - v))`, `exp(gk) * S + outer(k, v)` read out
as `S.T @ q`), are the same recurrence for S^T: their columns evolve
independently. `transposed(rec, state)` writes the spec for S^T = S'[cols, rows]
so the same readers apply; the chunkwise plan records which way it read a state
(recc.lowering.chunk) and its backends transpose the initial and final states.

Exact: every element is computed from the same operands by the same operations
(the rewrites of recc.analysis.normalise); only the layout changes.
"""

from __future__ import annotations

from dataclasses import replace

from recc.analysis.normalise import normalise
from recc.analysis.rewrite import state_dependent_lets, substitute_all
from recc.ir.nodes import STATE, Apply, Recurrence, Ref


def transposed(rec: Recurrence, state: str) -> Recurrence:
    """`rec` with the matrix state `state` declared [cols, rows] and every update and
    output written for it (lets that read the state are inlined)."""
    s = rec.state(state)
    rows, cols = s.dims
    flipped = Ref((cols, rows), state, STATE)
    as_written = Apply((rows, cols), "transpose", (flipped,))
    dependent = state_dependent_lets(rec, {state})
    exprs = [u.expr for u in rec.updates] + [o.expr for o in rec.outputs]
    new = substitute_all(rec, exprs, {state: as_written})
    updates = []
    for u, expr in zip(rec.updates, new):
        if u.name == state:
            expr = Apply((cols, rows), "transpose", (expr,))
        updates.append(replace(u, expr=expr))
    outputs = [replace(o, expr=e) for o, e in zip(rec.outputs, new[len(rec.updates) :])]
    flipped_rec = replace(
        rec,
        states=tuple(replace(d, dims=(cols, rows)) if d.name == state else d for d in rec.states),
        lets=tuple(let for let in rec.lets if let.name not in dependent),
        updates=tuple(updates),
        outputs=tuple(outputs),
    )
    return normalise(flipped_rec, outputs=True)
