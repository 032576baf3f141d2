"""Build IR expressions that fold as they go: `make`, `fold`, `ExprOps`.

Stage: ir. `make(op, *args)` is an IR node for `op(args)` with constants folded
with IEEE semantics (`fold_scalar`, bit for bit the interpreter's fp64) and
only the identities that hold for every value, infinities and NaN included
(x + 0 -> x, x * 1 -> x, max(x, -inf) -> x, ...; never x * 0 -> 0). `ExprOps`
is an evaluator semantics (see recc.ir.evaluate) whose values are such
expressions. The analysis builds its canonical forms with them, the
derivative engine's callers fold its results, and a printer folds constant
subexpressions before it prints them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from recc.ir.nodes import Apply, Const, Dims, Expr, embed
from recc.ir.ops import ELEMENTWISE, INTERNAL, OPS, REDUCTION, STRUCTURAL


class NotCanonical(Exception):
    """The expression is outside what folding (and a canonical-form extraction) handles."""


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
SCALAR_OPS = ELEMENTWISE


def fold_scalar(op: str, *values: float) -> float:
    """`op` on float64 scalars with IEEE semantics, as the interpreter computes it
    (overflow is inf, 0/0 and log(-1) are NaN; never raises)."""
    with torch.no_grad():
        args = [torch.tensor(v, dtype=torch.float64) for v in values]
        return float(OPS[op].torch(*args))


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
