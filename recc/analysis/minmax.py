"""MinMax forms: updates built from max, min and + of the state.

Stage: analysis. Three semirings:

  max-min:  s' = max(min(s, a), b). Any lattice polynomial f in s over a
            chain satisfies f(s) = max(min(s, f(+inf)), f(-inf)), so
            a = f(+inf) and b = f(-inf), read off by abstract evaluation
            over values `Clamp(top, bottom)` (never by substitution).
  max-plus: s' = max(s + a, b), read off by abstract evaluation over values
            `Shift(a, b)` = max(s + a, b).
  min-plus: s' = min(s + a, b), the same with min (its b absent is +inf).

Which one applies is decided by the classifier from sympy's expression tree.
"""

from __future__ import annotations

from dataclasses import dataclass

from recc.analysis.rewrite import (
    INF,
    AbstractOps,
    NotCanonical,
    abstract_updates,
    const,
    make,
    mentions,
    state_dependent_lets,
)
from recc.ir.nodes import Apply, Const, Expr, Recurrence


@dataclass(frozen=True)
class Shift:
    a: Expr  # s + a inside the max (min)
    b: Expr | None  # None is the lattice's identity: -inf for max, +inf for min


class PlusOps(AbstractOps):
    """max(s + a, b) (`lattice` "max") or min(s + a, b) ("min") of the state."""

    def __init__(self, lattice: str) -> None:
        self.lattice = lattice
        self.semiring = f"{lattice}-plus"

    def join(self, x: Expr | None, y: Expr | None) -> Expr | None:
        if x is None:
            return y
        if y is None:
            return x
        return make(self.lattice, x, y)

    def apply_abstract(self, node: Apply, args: list) -> Shift:
        op = node.op
        x = args[0]
        y = args[1] if len(args) > 1 else None
        if op in ("add", "sub"):
            if isinstance(x, Shift) and self.is_free(y):
                shift = lambda e: make(op, e, y)  # noqa: E731
                return Shift(shift(x.a), None if x.b is None else shift(x.b))
            if op == "add" and self.is_free(x) and isinstance(y, Shift):
                return Shift(make("add", x, y.a), None if y.b is None else make("add", x, y.b))
            raise NotCanonical(f"{self.semiring} allows s + c and s - c with a state-free c")
        if op == "relu" and self.lattice == "max":  # relu(x) = max(x, 0)
            op, y = "max", const(0.0)
        if op == self.lattice:
            if isinstance(x, Shift) and isinstance(y, Shift):
                return Shift(make(op, x.a, y.a), self.join(x.b, y.b))
            shift, c = (x, y) if isinstance(x, Shift) else (y, x)
            if isinstance(shift, Shift) and self.is_free(c):
                return Shift(shift.a, self.join(shift.b, c))
        raise NotCanonical(f"'{op}' of the state is not {self.semiring}")


def plus_coefficients(rec: Recurrence, state: str, lattice: str) -> tuple[Expr, Expr | None]:
    """(a, b) of s' = max(s + a, b) (lattice "max") or min(s + a, b) ("min")."""
    value = abstract_updates(rec, PlusOps(lattice), {state: Shift(const(0.0), None)})[state]
    if not isinstance(value, Shift):
        raise NotCanonical("the update does not involve the state")
    _check_free(rec, value.a, value.b)
    return value.a, value.b


@dataclass(frozen=True)
class Clamp:
    """max(min(s, top), bottom): every lattice polynomial in s over a chain is one,
    with top = f(+inf) and bottom = f(-inf). Const(+-inf) for the absent bounds."""

    top: Expr
    bottom: Expr


class MaxMinOps(AbstractOps):
    """Lattice polynomials of the state: max and min with state-free values only.

    Read off structurally, never by substituting +-inf into the spec: an update
    like `max(min(h, a), b) + h - h` is a lattice polynomial to sympy (h - h
    cancels) but not in the IR, where `+ inf - inf` would make the bound NaN."""

    def apply_abstract(self, node: Apply, args: list) -> Clamp:
        op = node.op
        if op == "relu":  # relu(x) = max(x, 0)
            op, args = "max", [args[0], const(0.0)]
        if op in ("max", "min"):
            x, y = args
            if isinstance(x, Clamp) and isinstance(y, Clamp):
                return Clamp(make(op, x.top, y.top), make(op, x.bottom, y.bottom))
            clamp, c = (x, y) if isinstance(x, Clamp) else (y, x)
            if isinstance(clamp, Clamp) and self.is_free(c):
                return Clamp(make(op, clamp.top, c), make(op, clamp.bottom, c))
        raise NotCanonical(f"'{op}' of the state is not max-min")


def max_min_coefficients(rec: Recurrence, state: str) -> tuple[Expr | None, Expr | None]:
    seed = Clamp(const(INF), const(-INF))
    value = abstract_updates(rec, MaxMinOps(), {state: seed})[state]
    if not isinstance(value, Clamp):
        raise NotCanonical("the update does not involve the state")
    a = None if isinstance(value.top, Const) and value.top.value == INF else value.top
    b = None if isinstance(value.bottom, Const) and value.bottom.value == -INF else value.bottom
    _check_free(rec, a, b)
    return a, b


def _check_free(rec: Recurrence, *exprs: Expr | None) -> None:
    names = {s.name for s in rec.states}
    if any(mentions(e, names | state_dependent_lets(rec, names)) for e in exprs):
        raise NotCanonical("a MinMax coefficient depends on a state")
