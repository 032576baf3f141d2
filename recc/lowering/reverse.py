"""The reverse step: one step's vector-Jacobian product, as IR.

Stage: lowering. What a generated reverse loop runs, step by step from the last,
instead of autograd through T steps of small ops: given the cotangents of a
step's new states (`d_new`: the next step's cotangent of its old states, or the
final state's) and of its outputs (`d_out`), the cotangents of

  the old states   d_old  -> the previous step's d_new
  its inputs       one [B, (H), ...] slice per step (the hoisted input
                   projections, and through them the spec's inputs)
  its params       per batch row: the loop sums them over the rows and steps

all written by `recc.ir.autodiff.vjp` over the step of a `SequentialPlan`.
The outputs read the new states; here each new state is written as its
update, so every cotangent is a function of the old states, the step's inputs
and params, and the seeds.

Seeds are chosen per call (`seeded`): an output no loss reads has no
cotangent (autograd's None, not a zero: a zero times an infinite local
derivative is NaN, which the spec's own gradient does not have), and a state
nothing reads is seeded at the last step only, as the loop differentiates its
update there alone (`recc.analysis.liveness`).
"""

from __future__ import annotations

from dataclasses import dataclass

from recc.analysis.liveness import unread_states
from recc.ir.autodiff import COTANGENT, vjp
from recc.ir.nodes import Expr, Recurrence, Ref, name_maker, substitute
from recc.lowering.sequential import SequentialPlan


@dataclass(frozen=True)
class ReverseStep:
    """The cotangents of one step's old states, inputs and params, as IR over the
    step's names and the seeds `d_out` / `d_new` (refs of role COTANGENT)."""

    step: Recurrence
    d_out: dict[str, str]  # output -> its cotangent's name
    d_new: dict[str, str]  # state -> the cotangent name of its new value
    old: dict[str, Expr]  # state -> the cotangent of its old value (absent: zero)
    inputs: dict[str, Expr]  # input of the step -> its cotangent at this step
    params: dict[str, Expr]  # param of the step -> its cotangent, per batch row
    seeded: tuple[frozenset[str], frozenset[str]]  # the outputs and states seeded


def reverse_step(
    seq: SequentialPlan, outputs: frozenset[str], states: frozenset[str]
) -> ReverseStep:
    """The reverse step of `seq`'s step with the cotangents of these `outputs` and of
    the new values of these `states` as seeds (the rest are absent)."""
    step = seq.step
    dims = {s.name: s.dims for s in step.states}
    fresh = name_maker(step)
    d_new = {s.name: fresh(f"d_{s.name}") for s in step.states}
    d_out = {o.name: fresh(f"d_out_{o.name}") for o in step.outputs}
    new_values = {u.name: u.expr for u in step.updates}
    seeds: list[tuple[Expr, Expr]] = []
    for o in step.outputs:
        if o.name in outputs:  # its new states written as their updates
            written = substitute(o.expr, new_values)
            seeds.append((written, Ref(o.expr.dims, d_out[o.name], COTANGENT)))
    for u in step.updates:
        if u.name in states:
            seeds.append((u.expr, Ref(dims[u.name], d_new[u.name], COTANGENT)))
    lets = {d.name: d.expr for d in step.lets}
    wanted = {*dims, *(i.name for i in step.inputs), *(p.name for p in step.params)}
    found = vjp(seeds, lets, wrt=wanted.__contains__)

    def of(names) -> dict[str, Expr]:
        return {n: e for n in names if (e := found.of(n)) is not None}

    return ReverseStep(
        step,
        d_out,
        d_new,
        of(dims),
        of(i.name for i in step.inputs),
        of(p.name for p in step.params),
        (frozenset(outputs), frozenset(states)),
    )


def unread(seq: SequentialPlan) -> frozenset[str]:
    """States nothing reads: seeded at the last step only."""
    return frozenset(unread_states(seq.step))


__all__ = ["ReverseStep", "reverse_step", "unread"]
