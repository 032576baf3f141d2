"""Coefficients of an affine, channel-wise update: s_i' = sum_j a_ij * s_j + b_i.

Stage: analysis. `a_ij` is the forward derivative (JVP) of update i along
state j with tangent 1, computed on the IR by dual numbers that carry one
tangent per state (one evaluation of the updates gives every coefficient).
Only the affine operators of the state are allowed (+, -, scaling by a
state-free value, division by one); anything else raises NotCanonical, so a
form read off here is exact for the spec as written. `b_i` is the sum of
update i's terms that read no state, carried by the same dual numbers (the
update at every state 0, without multiplying anything by 0).

sympy decides the class on its own algebra, which cancels h / h to 1; that
is not true at h = 0 (IEEE: NaN), so the coefficients of every state an
update reads come from here, never from sympy's view of which states matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recc.analysis.rewrite import (
    AbstractOps,
    NotCanonical,
    abstract_updates,
    const,
    make,
    mentions,
    state_dependent_lets,
)
from recc.ir.evaluate import evaluate
from recc.ir.nodes import STATE, Apply, Const, Expr, Recurrence, Ref


@dataclass(frozen=True)
class Dual:
    primal: Expr
    # d(primal)/d(state), by state name; a state that is absent has tangent zero.
    tangents: dict[str, Expr] = field(default_factory=dict, hash=False)
    # the value with every state at 0, None where that is exactly nothing (the
    # terms that read a state are dropped, never multiplied in as 0 * x)
    offset: Expr | None = None


def _offset(op: str, a: Expr | None, b: Expr | None, like) -> Expr | None:
    """The offset of a sum or difference, None meaning nothing."""
    if a is None:
        return b if b is None or op == "add" else make("neg", b)
    return a if b is None else make(op, a, b, like=like)


def _combine(op: str, t1: dict[str, Expr], t2: dict[str, Expr], like) -> dict[str, Expr]:
    """Tangents of a sum or difference."""
    out = dict(t1)
    for name, t in t2.items():
        if name in out:
            out[name] = make(op, out[name], t, like=like)
        else:
            out[name] = t if op == "add" else make("neg", t)
    return out


class DualOps(AbstractOps):
    """Forward-mode derivatives along every state at once, through the affine operators."""

    def free(self, expr: Expr) -> Dual:
        return Dual(expr, {}, expr)

    def is_free(self, value: Dual) -> bool:
        return not value.tangents

    def expr_of(self, value: Dual) -> Expr:
        return value.primal

    def apply_abstract(self, node: Apply, args: list[Dual]) -> Dual:
        op = node.op
        like = node.dims
        primal = make(op, *(a.primal for a in args), like=like)
        if op in ("add", "sub"):
            a, b = args
            tangents = _combine(op, a.tangents, b.tangents, like)
            return Dual(primal, tangents, _offset(op, a.offset, b.offset, like))
        if op == "neg":
            (a,) = args
            offset = None if a.offset is None else make("neg", a.offset)
            return Dual(primal, {n: make("neg", t) for n, t in a.tangents.items()}, offset)
        if op == "mul":
            a, b = args
            if a.tangents and b.tangents:
                raise NotCanonical("product of two state-dependent factors")
            varying, factor = (a, b.primal) if a.tangents else (b, a.primal)
            offset = None if varying.offset is None else make("mul", varying.offset, factor)
            return Dual(
                primal,
                {n: make("mul", t, factor, like=like) for n, t in varying.tangents.items()},
                offset,
            )
        if op == "div":
            if args[1].tangents:
                raise NotCanonical("division by a state-dependent value")
            divisor = args[1].primal
            offset = None if args[0].offset is None else make("div", args[0].offset, divisor)
            return Dual(
                primal,
                {n: make("div", t, divisor, like=like) for n, t in args[0].tangents.items()},
                offset,
            )
        raise NotCanonical(f"'{op}' of the state is not affine")


def diagonal_coefficients(rec: Recurrence) -> dict[tuple[str, str], Expr]:
    """d(update of target)/d(source) for every (target, source) whose coefficient is
    not zero. Raises NotCanonical unless every update is affine in the states."""
    updates = _dual_updates(rec)
    found: dict[tuple[str, str], Expr] = {}
    names = {s.name for s in rec.states}
    forbidden = names | state_dependent_lets(rec, names)
    for target, value in updates.items():
        for source, coefficient in value.tangents.items():
            if isinstance(coefficient, Const) and coefficient.value == 0.0:
                continue
            if mentions(coefficient, forbidden):
                raise NotCanonical("a coefficient still depends on the state")
            found[(target, source)] = coefficient
    return found


def _dual_updates(rec: Recurrence) -> dict[str, Dual]:
    seed = {
        s.name: Dual(Ref(s.dims, s.name, STATE), {s.name: const(1.0)}, None) for s in rec.states
    }
    return abstract_updates(rec, DualOps(), seed)


def injections(rec: Recurrence) -> dict[str, Expr | None]:
    """Every update's terms that read no state (None where there are none): the
    update with every state at 0, read off the same dual numbers, so a term that
    reads a state is dropped rather than evaluated as 0 * x."""
    names = {s.name for s in rec.states}
    found: dict[str, Expr | None] = {}
    forbidden = names | state_dependent_lets(rec, names)
    for name, dual in _dual_updates(rec).items():
        value = dual.offset
        if value is None:
            found[name] = None
            continue
        if mentions(value, forbidden):
            raise NotCanonical("a coefficient still depends on the state")
        found[name] = value
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
