"""Coefficients of an affine, channel-wise update: s_i' = sum_j a_ij * s_j + b_i.

Stage: analysis. `a_ij` is the forward derivative of update i along state j
with tangent 1: `recc.ir.autodiff.jvp` on the IR (the one derivative engine),
folded (x * 1 -> x). A coefficient that still reads a state means the update
is not affine in the states as written (a product of two state-dependent
factors, a function of the state, a contraction of it): NotCanonical, so a
form read off here is exact for the spec as written. `b_i` is the sum of
update i's terms that read no state (the update at every state 0, without
multiplying anything by 0), read off by an evaluator that keeps only those
terms through the affine operators.

sympy decides the class on its own algebra, which cancels h / h to 1; that
is not true at h = 0 (IEEE: NaN), so the coefficients of every state an
update reads come from here, never from sympy's view of which states matter.
"""

from __future__ import annotations

from dataclasses import dataclass

from recc.analysis.rewrite import (
    AbstractOps,
    NotCanonical,
    abstract_updates,
    const,
    fold,
    is_const,
    make,
    mentions,
    state_dependent_lets,
)
from recc.ir.autodiff import jvp
from recc.ir.evaluate import evaluate
from recc.ir.nodes import Apply, Const, Expr, Recurrence
from recc.ir.ops import ELEMENTWISE, INTERNAL


def diagonal_coefficients(rec: Recurrence) -> dict[tuple[str, str], Expr]:
    """d(update of target)/d(source) for every (target, source) whose coefficient is
    not zero. Raises NotCanonical unless every update is affine in the states."""
    names = {s.name for s in rec.states}
    dependent = state_dependent_lets(rec, names)
    lets = {let.name: let.expr for let in rec.lets if let.name in dependent}
    forbidden = names | dependent
    found: dict[tuple[str, str], Expr] = {}
    for update in rec.updates:
        for source in rec.states:
            tangent = jvp(update.expr, {source.name: const(1.0)}, lets)
            if tangent is None:
                continue  # the update does not read the source
            coefficient = fold(_without_broadcasts(tangent))
            if is_const(coefficient, 0.0):
                continue
            if mentions(coefficient, forbidden):
                raise NotCanonical("a coefficient still depends on the state")
            found[(update.name, source.name)] = coefficient
    return found


def _without_broadcasts(expr: Expr, elementwise: bool = True) -> Expr:
    """`expr` without the `broadcast_like` nodes an elementwise op consumes (jvp
    broadcasts a tangent to a node's shape by reading the node, which may read the
    state; by name, an elementwise op broadcasts its operands itself)."""
    if not isinstance(expr, Apply):
        return expr
    if expr.op == "broadcast_like" and elementwise:
        return _without_broadcasts(expr.args[0])
    inner = expr.op in ELEMENTWISE or expr.op in INTERNAL
    args = tuple(_without_broadcasts(a, inner) for a in expr.args)
    return Apply(expr.dims, expr.op, args, span=expr.span)


@dataclass(frozen=True)
class _Terms:
    """A value that reads a state, by its terms that read none (None: there are none)."""

    free: Expr | None


def _sum(op: str, a: Expr | None, b: Expr | None, like) -> Expr | None:
    """The state-free terms of a sum or difference, None meaning nothing."""
    if a is None:
        return b if b is None or op == "add" else make("neg", b)
    return a if b is None else make(op, a, b, like=like)


class _FreeTermsOps(AbstractOps):
    """The terms of an affine value that read no state, through the affine operators."""

    def apply_abstract(self, node: Apply, args: list) -> _Terms:
        op, like = node.op, node.dims
        terms = [a.free if isinstance(a, _Terms) else a for a in args]
        if op in ("add", "sub"):
            return _Terms(_sum(op, terms[0], terms[1], like))
        if op == "neg":
            return _Terms(None if terms[0] is None else make("neg", terms[0]))
        if op == "mul":
            if all(isinstance(a, _Terms) for a in args):
                raise NotCanonical("product of two state-dependent factors")
            varying, factor = (0, 1) if isinstance(args[0], _Terms) else (1, 0)
            free = terms[varying]
            return _Terms(None if free is None else make("mul", free, terms[factor]))
        if op == "div":
            if isinstance(args[1], _Terms):
                raise NotCanonical("division by a state-dependent value")
            return _Terms(None if terms[0] is None else make("div", terms[0], terms[1]))
        raise NotCanonical(f"'{op}' of the state is not affine")


def injections(rec: Recurrence) -> dict[str, Expr | None]:
    """Every update's terms that read no state (None where there are none): the
    update with every state at 0, a term that reads a state dropped rather than
    evaluated as 0 * x."""
    names = {s.name for s in rec.states}
    forbidden = names | state_dependent_lets(rec, names)
    seed = {s.name: _Terms(None) for s in rec.states}
    found: dict[str, Expr | None] = {}
    for name, value in abstract_updates(rec, _FreeTermsOps(), seed).items():
        free = value.free if isinstance(value, _Terms) else value
        if mentions(free, forbidden):
            raise NotCanonical("a coefficient still depends on the state")
        found[name] = free
    return found


# Degree in the state of a value, as the IR writes it: 0 state-free, 1 affine,
# NONLINEAR anything more (a product of two state-dependent factors, a function
# of the state). An upper bound on the true degree: h / h and (h - h) * h are
# NONLINEAR here, which is what the canonical forms (read off the IR) need.
NONLINEAR_DEGREE = 2
_LINEAR_OPS = ("add", "sub", "neg", "transpose", "sum")
_PRODUCTS = ("mul", "matmul", "outer", "dot")


class _DegreeOps:
    def const(self, node: Const) -> int:
        return 0

    def apply(self, node: Apply, args: list[int]) -> int:
        if node.op in _LINEAR_OPS:
            return max(args)
        if node.op in _PRODUCTS:
            return min(NONLINEAR_DEGREE, sum(args))
        if node.op == "div":
            return args[0] if args[1] == 0 else NONLINEAR_DEGREE
        return 0 if max(args) == 0 else NONLINEAR_DEGREE  # any other function


def affine_in_the_states(rec: Recurrence) -> bool:
    """Every update affine in the states, operator by operator as written."""
    env: dict[str, int] = {d.name: 0 for d in (*rec.inputs, *rec.value_params())}
    env.update({s.name: 1 for s in rec.states})
    ops = _DegreeOps()
    for let in rec.lets:
        env[let.name] = evaluate(let.expr, env, ops)
    return all(evaluate(u.expr, env, ops) <= 1 for u in rec.updates)
