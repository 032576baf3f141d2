"""Coefficients of an affine, channel-wise update: s_i' = sum_j a_ij * s_j + b_i.

Stage: analysis. `a_ij` is the forward derivative (JVP) of update i along
state j with tangent 1, computed on the IR by dual numbers: exact for an
affine update whose Jacobian is diagonal per channel (which sympy has already
established). `b_i` is update i with every state set to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from recc.analysis.rewrite import (
    AbstractOps,
    NotCanonical,
    abstract_updates,
    const,
    make,
    mentions,
    state_dependent_lets,
    substitute,
)
from recc.ir.nodes import STATE, Apply, Const, Expr, Recurrence, Ref


@dataclass(frozen=True)
class Dual:
    primal: Expr
    tangent: Expr | None  # None is zero


class DualOps(AbstractOps):
    """Forward-mode derivative through the affine operators."""

    def free(self, expr: Expr) -> Dual:
        return Dual(expr, None)

    def is_free(self, value: Dual) -> bool:
        return value.tangent is None

    def expr_of(self, value: Dual) -> Expr:
        return value.primal

    def apply_abstract(self, node: Apply, args: list[Dual]) -> Dual:
        op = node.op
        like = node.dims
        primal = make(op, *(a.primal for a in args), like=like)
        t = [a.tangent for a in args]
        if op in ("add", "sub"):
            if t[0] is None:
                tangent = t[1] if op == "add" else make("neg", t[1])
            elif t[1] is None:
                tangent = t[0]
            else:
                tangent = make(op, t[0], t[1], like=like)
            return Dual(primal, tangent)
        if op == "neg":
            return Dual(primal, make("neg", t[0]))
        if op == "mul":
            a, b = args
            if t[0] is not None and t[1] is not None:
                raise NotCanonical("product of two state-dependent factors")
            if t[0] is not None:
                return Dual(primal, make("mul", t[0], b.primal, like=like))
            return Dual(primal, make("mul", a.primal, t[1], like=like))
        if op == "div":
            if t[1] is not None:
                raise NotCanonical("division by a state-dependent value")
            return Dual(primal, make("div", t[0], args[1].primal, like=like))
        raise NotCanonical(f"'{op}' of the state is not affine")


def diagonal_coefficient(rec: Recurrence, target: str, wrt: str) -> Expr | None:
    """d(update of `target`)/d(`wrt`) for a channel-wise affine update; None if zero."""
    state = rec.state(wrt)
    seed = {wrt: Dual(Ref(state.dims, state.name, STATE), const(1.0))}
    value = abstract_updates(rec, DualOps(), seed)[target]
    coefficient = value.tangent
    if coefficient is None or (isinstance(coefficient, Const) and coefficient.value == 0.0):
        return None
    _check_state_free(rec, coefficient)
    return coefficient


def injection(rec: Recurrence, target: str) -> Expr | None:
    """The update of `target` with every state at 0; None if zero."""
    zeros = {s.name: const(0.0) for s in rec.states}
    value = substitute(rec, rec.update_of(target), zeros)
    if isinstance(value, Const) and value.value == 0.0:
        return None
    _check_state_free(rec, value)
    return value


def _check_state_free(rec: Recurrence, expr: Expr) -> None:
    names = {s.name for s in rec.states}
    if mentions(expr, names | state_dependent_lets(rec, names)):
        raise NotCanonical("a coefficient still depends on the state")
