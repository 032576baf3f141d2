"""Build IR expressions while evaluating: substitution and constant folding.

Stage: analysis. `ExprOps` is an evaluator semantics (see recc.ir.evaluate)
whose values are IR expressions: evaluating a spec with it rebuilds the
spec's expressions, folding constants with IEEE semantics (`fold_scalar`)
and only the identities that hold for every value, infinities and NaN
included (x + 0 -> x, x * 1 -> x, max(x, -inf) -> x, ...; never x * 0 -> 0).
Binding a name in the environment substitutes it. Lets that do not depend on
a substituted name stay as references, so coefficients read like the spec.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from recc.interpreter import ELEMENTWISE
from recc.ir.evaluate import evaluate
from recc.ir.nodes import (
    INPUT,
    LET,
    PARAM,
    STATE,
    Apply,
    Const,
    Dims,
    Expr,
    Recurrence,
    Ref,
    StateDecl,
    embed,
    walk,
)
from recc.ir.ops import INTERNAL, REDUCTION, STRUCTURAL


class NotCanonical(Exception):
    """The expression is outside what a canonical-form extraction handles."""


INF = float("inf")


def const(value: float) -> Const:
    return Const((), value)


def is_const(expr: Any, value: float | None = None) -> bool:
    return isinstance(expr, Const) and (value is None or expr.value == value)


def _fits(small: Dims, large: Dims) -> bool:
    try:
        return embed(small, large) is not None
    except ValueError:
        return False


def _broadcast(a: Dims, b: Dims, like: Dims | None) -> Dims:
    """The dims of an elementwise result. Folding can shrink operands (a[K] * S
    with S's tangent 1 is a[K]), so two operands may no longer nest, e.g. [K]
    and [V]; then the original node's dims `like`, which holds both, are used."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    if _fits(small, large):
        return large
    if like is not None and _fits(a, like) and _fits(b, like):
        return like
    raise NotCanonical(f"cannot broadcast {a} with {b}")


# The elementwise operators on float64 scalars are the interpreter's own (torch's
# kernels, recc's tie and NaN rules), so a folded constant is bit for bit what the
# interpreter computes in fp64: torch's sqrt(2.0) is 1 ulp below math.sqrt(2), and
# two spellings of one constant would break the ties the spec writes.
SCALAR_OPS = frozenset(ELEMENTWISE)


def fold_scalar(op: str, *values: float) -> float:
    """`op` on float64 scalars with IEEE semantics, as the interpreter computes it
    (overflow is inf, 0/0 and log(-1) are NaN; never raises)."""
    with torch.no_grad():
        args = [torch.tensor(v, dtype=torch.float64) for v in values]
        return float(ELEMENTWISE[op](*args))


def _is_neg(expr: Expr) -> bool:
    return isinstance(expr, Apply) and expr.op == "neg"


def make(op: str, *args: Expr, like: Dims | None = None) -> Expr:
    """An IR node for `op(args)`, folded where the result is obvious.

    `like`: the dims of the spec's node this one rebuilds, if any.
    """
    if op in INTERNAL or op in REDUCTION:  # the derivative rules' own: never folded
        dims = max((a.dims for a in args), key=len)
        return Apply(like if like is not None else dims, op, args)
    if op in SCALAR_OPS and len(args) == 2:
        a, b = args
        if isinstance(a, Const) and isinstance(b, Const):
            value = fold_scalar(op, a.value, b.value)
            if not math.isnan(value):
                return const(value)
        if op == "add":
            if is_const(a, 0.0):
                return b
            if is_const(b, 0.0):
                return a
            if _is_neg(b):
                return make("sub", a, b.args[0])
            if _is_neg(a):
                return make("sub", b, a.args[0])
        if op == "sub":
            if is_const(b, 0.0):
                return a
            # not 0 - x -> -x: at x = 0 they differ in the sign of zero (1 / (0 - x)
            # is +inf, 1 / -x is -inf)
            if _is_neg(b):
                return make("add", a, b.args[0])
        if op == "mul":
            # not x * 0 -> 0: for x = +-inf or NaN it is NaN, and its gradient through
            # a singular derivative (sqrt(0 * x)) is NaN too; constants fold above
            if is_const(a, 1.0):
                return b
            if is_const(b, 1.0):
                return a
            if is_const(a, -1.0):
                return make("neg", b)
            if is_const(b, -1.0):
                return make("neg", a)
        if op == "div":
            if is_const(b, 1.0):
                return a
        if op == "max":
            if is_const(a, -INF) or is_const(b, INF):
                return b
            if is_const(b, -INF) or is_const(a, INF):
                return a
        if op == "min":
            if is_const(a, INF) or is_const(b, -INF):
                return b
            if is_const(b, INF) or is_const(a, -INF):
                return a
        return Apply(_broadcast(a.dims, b.dims, like), op, (a, b))
    if op in SCALAR_OPS:
        (x,) = args
        if op == "neg" and isinstance(x, Apply) and x.op == "neg":
            return x.args[0]
        if isinstance(x, Const):
            value = fold_scalar(op, x.value)
            if not math.isnan(value):
                return const(value)
        return Apply(x.dims, op, (x,))
    if op in STRUCTURAL:
        if any(is_const(a, 0.0) for a in args):
            return const(0.0)
        if any(isinstance(a, Const) for a in args):
            raise NotCanonical(f"{op} of a constant")
        if op == "matmul":
            a, b = args
            if len(a.dims) == 0 or len(b.dims) == 0 or a.dims[-1] != b.dims[0]:
                raise NotCanonical("matmul shapes")
            return Apply(a.dims[:-1] + b.dims[1:], op, args)
        if op == "outer":
            return Apply(args[0].dims + args[1].dims, op, args)
        if op in ("dot", "sum"):
            return Apply((), op, args)
        return Apply(args[0].dims[::-1], op, args)
    raise AssertionError(op)  # pragma: no cover


class ExprOps:
    """Evaluator semantics whose values are (folded) IR expressions."""

    def const(self, node: Const) -> Expr:
        return node

    def apply(self, node: Apply, args: list[Any]) -> Expr:
        return make(node.op, *args, like=node.dims)


def fold(expr: Expr) -> Expr:
    """`expr` rebuilt by `make`: constants folded, and the identities that hold
    for every value applied (a derivative's x * 1, x + 0)."""
    if isinstance(expr, Apply):
        return make(expr.op, *(fold(a) for a in expr.args), like=expr.dims)
    return expr


def state_dependent_lets(rec: Recurrence, names: set[str]) -> set[str]:
    """Lets whose value depends (transitively) on any of `names`."""
    dependent: set[str] = set()
    for let in rec.lets:
        refs = {n.name for n in walk(let.expr) if isinstance(n, Ref)}
        if refs & (names | dependent):
            dependent.add(let.name)
    return dependent


def lets_read_by_updates(rec: Recurrence) -> set[str]:
    """Lets the updates read, directly or through other lets (not those only
    the outputs read: a readout may be any function of the state)."""
    names = {let.name for let in rec.lets}

    def reads(expr: Expr) -> set[str]:
        return {n.name for n in walk(expr) if isinstance(n, Ref) and n.name in names}

    needed = set().union(*(reads(u.expr) for u in rec.updates))
    for let in reversed(rec.lets):  # a let reads only lets defined before it
        if let.name in needed:
            needed |= reads(let.expr)
    return needed


def _leaves(rec: Recurrence) -> dict[str, Any]:
    """Every input and param (dims read as values too) as a reference to itself."""
    env: dict[str, Any] = {d.name: Ref(d.dims, d.name, INPUT) for d in rec.inputs}
    env.update({d.name: Ref(d.dims, d.name, PARAM) for d in rec.value_params()})
    return env


def _with_lets(rec: Recurrence, env: dict[str, Any], dependent: set[str]) -> ExprOps:
    """Bind every let in `env`: a dependent one written out, the others as references
    to themselves. Returns the evaluator used, for the expressions that follow."""
    ops = ExprOps()
    for let in rec.lets:
        if let.name in dependent:
            env[let.name] = evaluate(let.expr, env, ops)
        else:
            env[let.name] = Ref(let.expr.dims, let.name, LET)
    return ops


def substitute(rec: Recurrence, expr: Expr, bindings: dict[str, Expr]) -> Expr:
    """`expr` with names replaced by `bindings`; dependent lets are inlined."""
    return substitute_all(rec, [expr], bindings)[0]


def substitute_all(rec: Recurrence, exprs: list[Expr], bindings: dict[str, Expr]) -> list[Expr]:
    """`substitute` for several expressions, the lets evaluated once."""
    env = _leaves(rec)
    for s in rec.states:
        env[s.name] = Ref(s.dims, s.name, STATE)
    dependent = state_dependent_lets(rec, set(bindings))
    env.update(bindings)
    ops = _with_lets(rec, env, dependent)
    return [evaluate(expr, env, ops) for expr in exprs]


def readouts_at_old_states(rec: Recurrence, old: Callable[[StateDecl], Expr]) -> list[Expr]:
    """Every output with the state-dependent lets it reads written out, the states
    those lets read replaced by `old(state)` (h_{t-1}: a let reads the old state),
    while the output's own references to a state stay (h_t: an output reads the new
    one). An output that reads no state-dependent let is returned as written."""
    names = {s.name for s in rec.states}
    dependent = state_dependent_lets(rec, names)
    env = _leaves(rec)
    for s in rec.states:
        env[s.name] = old(s)
    ops = _with_lets(rec, env, dependent)
    for s in rec.states:
        env[s.name] = Ref(s.dims, s.name, STATE)
    return [
        evaluate(o.expr, env, ops) if mentions(o.expr, dependent) else o.expr for o in rec.outputs
    ]


def mentions(expr: Expr | None, names: set[str]) -> bool:
    return expr is not None and any(isinstance(n, Ref) and n.name in names for n in walk(expr))


class AbstractOps:
    """An evaluator semantics over an abstract domain with IR expressions as its
    state-free values. Subclasses handle values that involve the state."""

    def free(self, expr: Expr) -> Any:
        return expr

    def is_free(self, value: Any) -> bool:
        return isinstance(value, Expr)

    def const(self, node: Const) -> Any:
        return self.free(node)

    def apply(self, node: Apply, args: list[Any]) -> Any:
        if all(self.is_free(a) for a in args):
            return self.free(make(node.op, *(self.expr_of(a) for a in args), like=node.dims))
        return self.apply_abstract(node, args)

    def expr_of(self, value: Any) -> Expr:
        return value

    def apply_abstract(self, node: Apply, args: list[Any]) -> Any:
        raise NotCanonical(f"'{node.op}' of the state")


def abstract_updates(rec: Recurrence, ops: AbstractOps, states: dict[str, Any]) -> dict[str, Any]:
    """Evaluate every update with `states` bound to abstract values.

    Inputs, params and other states are free references; a let whose value
    comes out state-free stays a reference to the let. Lets that no update
    reads are skipped: they cannot change the transition's form.
    """
    env: dict[str, Any] = {}
    for decl in rec.inputs:
        env[decl.name] = ops.free(Ref(decl.dims, decl.name, INPUT))
    for decl in rec.value_params():
        env[decl.name] = ops.free(Ref(decl.dims, decl.name, PARAM))
    for s in rec.states:
        env[s.name] = states.get(s.name, ops.free(Ref(s.dims, s.name, STATE)))
    needed = lets_read_by_updates(rec)
    for let in rec.lets:
        if let.name not in needed:
            continue
        value = evaluate(let.expr, env, ops)
        env[let.name] = ops.free(Ref(let.expr.dims, let.name, LET)) if ops.is_free(value) else value
    return {u.name: evaluate(u.expr, env, ops) for u in rec.updates}
