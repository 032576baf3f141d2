"""The sequential form: the step loop with its state-free work taken out of it.

Stage: lowering. A step loop (the interpreter) evaluates every expression of
the step T times, one step at a time, even those that never read the state:
GRU's input projections `W_ir @ x + b_ir`, a gate of the inputs alone, a
product of params. `sequential_plan` splits the step in two:

  hoisted   the maximal subexpressions that read no state, each computed once
            for the whole sequence (`varies`: it reads an input, so it is a
            `[B, T, ...]` tensor, one large op over all steps) or once per
            call (it reads params only);
  step      the spec's step with each hoisted subexpression replaced by a
            name: an input (per-step slice) where it varies, a param where
            not. It is itself a `Recurrence`, so the interpreter runs it and
            every printer prints it; what is left in it reads the state.

A state-free let is hoisted whole, under its own name. The step computes
exactly what the spec's step computes: the same ops on the same operands, in
the same order (a hoisted node's value is the value the loop would compute
at that step), so the two agree to the last bit wherever the ops do.
"""

from __future__ import annotations

from dataclasses import dataclass

from recc.analysis.liveness import unread_states
from recc.ir.nodes import (
    INPUT,
    LET,
    PARAM,
    Apply,
    Const,
    Definition,
    Expr,
    Recurrence,
    Ref,
    TensorDecl,
    lets_read,
    walk,
)

# Hoisted subexpressions that are not lets get names no spec can spell.
_HOISTED = "hoisted "


@dataclass(frozen=True)
class Hoisted:
    """One state-free value: computed for all steps at once (`varies`) or once."""

    name: str
    expr: Expr  # over inputs, params and earlier hoisted names
    varies: bool


@dataclass(frozen=True, eq=False)
class SequentialPlan:
    spec: Recurrence
    hoisted: tuple[Hoisted, ...]  # in evaluation order
    step: Recurrence  # the step that is left: reads the hoisted names

    def describe(self) -> str:
        varying = sum(h.varies for h in self.hoisted)
        once = len(self.hoisted) - varying
        return (
            f"{varying} state-free value(s) computed for all steps at once, "
            f"{once} from params once; the loop evaluates the rest"
        )


def sequential_plan(rec: Recurrence) -> SequentialPlan:
    """Hoist every maximal state-free subexpression of `rec`'s step."""
    return _Hoister(rec).plan()


class _Hoister:
    def __init__(self, rec: Recurrence) -> None:
        self.rec = rec
        self.inputs = {i.name for i in rec.inputs}
        self.states = {s.name for s in rec.states}
        self.reading: set[str] = set()  # lets that read a state
        self.varying: set[str] = set(self.inputs)  # names that change per step
        self.hoisted: list[Hoisted] = []
        self.by_expr: dict[Expr, Ref] = {}  # a repeated subexpression is hoisted once

    def reads_state(self, expr: Expr) -> bool:
        return any(
            isinstance(n, Ref) and (n.name in self.states or n.name in self.reading)
            for n in walk(expr)
        )

    def varies(self, expr: Expr) -> bool:
        return any(isinstance(n, Ref) and n.name in self.varying for n in walk(expr))

    def hoist(self, expr: Expr, name: str) -> Ref:
        varies = self.varies(expr)
        self.hoisted.append(Hoisted(name, expr, varies))
        if varies:
            self.varying.add(name)
        return Ref(expr.dims, name, INPUT if varies else PARAM, span=expr.span)

    def rewrite(self, expr: Expr) -> Expr:
        """`expr` with its maximal state-free subexpressions replaced by names."""
        if isinstance(expr, (Const, Ref)):
            return expr
        assert isinstance(expr, Apply)
        if not self.reads_state(expr) and any(isinstance(n, Ref) for n in walk(expr)):
            if expr not in self.by_expr:
                self.by_expr[expr] = self.hoist(expr, f"{_HOISTED}{len(self.hoisted)}")
            return self.by_expr[expr]
        args = tuple(self.rewrite(a) for a in expr.args)
        return expr if args == expr.args else Apply(expr.dims, expr.op, args, span=expr.span)

    def plan(self) -> SequentialPlan:
        rec = self.rec
        # A state nothing reads matters at the last step only: the loop differentiates
        # its update there alone. Hoisted over all steps, the steps before would enter
        # the backward with a zero cotangent, and 0 * inf is NaN (sqrt'(0)): its update,
        # and the lets only it needs, stay in the loop as written.
        unread = set(unread_states(rec))
        live = lets_read(rec, [d.expr for d in rec.updates if d.name not in unread])
        live |= lets_read(rec, [d.expr for d in rec.outputs])
        lets: list[Definition] = []
        renamed: dict[str, Ref] = {}  # a hoisted let -> its name as an input or param
        for let in rec.lets:
            expr = _rename(let.expr, renamed)
            if let.name not in live:
                self.reading.add(let.name)  # never hoisted: kept, as written
                lets.append(Definition(let.name, expr, let.span))
            elif self.reads_state(expr):
                self.reading.add(let.name)
                lets.append(Definition(let.name, self.rewrite(expr), let.span))
            else:
                renamed[let.name] = self.hoist(expr, let.name)
        updates = [
            Definition(
                u.name,
                _rename(u.expr, renamed)
                if u.name in unread
                else self.rewrite(_rename(u.expr, renamed)),
                u.span,
            )
            for u in rec.updates
        ]
        outputs = [
            Definition(o.name, self.rewrite(_rename(o.expr, renamed)), o.span) for o in rec.outputs
        ]
        step = _step_spec(rec, self.hoisted, tuple(lets), tuple(updates), tuple(outputs))
        return SequentialPlan(rec, tuple(self.hoisted), step)


def _rename(expr: Expr, renamed: dict[str, Ref]) -> Expr:
    """References to hoisted lets as references to the hoisted names."""
    if isinstance(expr, Ref):
        return renamed.get(expr.name, expr) if expr.role == LET else expr
    if isinstance(expr, Apply):
        args = tuple(_rename(a, renamed) for a in expr.args)
        return expr if args == expr.args else Apply(expr.dims, expr.op, args, span=expr.span)
    return expr


def _step_spec(rec: Recurrence, hoisted, lets, updates, outputs) -> Recurrence:
    """The step that is left, as a spec: its inputs are the original inputs it still
    reads and the varying hoisted values; its params likewise."""
    read = {
        n.name
        for d in (*lets, *updates, *outputs)
        for n in walk(d.expr)
        if isinstance(n, Ref) and n.role in (INPUT, PARAM)
    }
    inputs = [i for i in rec.inputs if i.name in read]
    inputs += [
        TensorDecl(h.name, h.expr.dims, h.expr.span) for h in hoisted if h.varies and h.name in read
    ]
    if not inputs:  # the printed step takes its dtype from an input (a spec has one)
        inputs = [rec.inputs[0]]
    params = [p for p in rec.params if p.name in read]
    params += [
        TensorDecl(h.name, h.expr.dims, h.expr.span)
        for h in hoisted
        if not h.varies and h.name in read
    ]
    dim_values = tuple(d for d in rec.dim_values if d in read)
    return Recurrence(
        rec.name,
        rec.dims,
        tuple(inputs),
        tuple(params),
        rec.states,
        lets,
        updates,
        outputs,
        dim_values,
        rec.source,
        rec.filename,
    )


__all__ = ["Hoisted", "SequentialPlan", "sequential_plan"]
