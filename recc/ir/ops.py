"""The op table: every IR operator's meaning, written once.

Stage: ir. One `Op` per operator says how a spec spells it, what it computes
on torch tensors (the interpreter, constant folding and the torch backend run
that), what it is as a sympy expression (the classifier's algebra), and its
vector-Jacobian product as IR (`vjp`), which each backend prints the way it
prints the forward. A backend adds one printing line per op; nothing else
lists the ops. To add an op: add its row here, its printing line to each
backend (`recc/backends/triton/tile.py`: `PRINT`), and its row to
`docs/language.md`; the tests check that each of those has every op.

Four kinds of op:

  ELEMENTWISE  shape-preserving, broadcast by dim name; the table defines them
  STRUCTURAL   matmul, outer, dot, sum, transpose: their shapes are their
               meaning, and each consumer handles them in its own terms
  INTERNAL     never written in a spec; derivative rules use them
               (comparisons, a select, a broadcast), elementwise by dim name
  REDUCTION    never written in a spec: the sums a derivative needs where a
               value was broadcast (recc.ir.autodiff): `sum_to` over the dims
               the node lacks, `sum_steps` over the steps an evaluation
               covers; each consumer handles their shapes

A `vjp(g, args, out)` takes IR expressions (the cotangent `g`, with the
node's dims; the node's operands; the node itself, whose value is known)
and returns, per operand, the cotangent contribution as IR, or None where
there is none (a constant exponent). Rules follow torch's autograd formulas,
selections included: a `select` passes 0 where torch's where would, so a
NaN or inf cotangent on the branch not taken stays out (relu, max, min).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import sympy
import torch

from recc.ir.nodes import Apply, Const, Expr
from recc.ir.ties import max_picks_first, maximum, min_picks_first, minimum


class Kind(Enum):
    ELEMENTWISE = "elementwise"
    STRUCTURAL = "structural"
    INTERNAL = "internal"
    REDUCTION = "reduction"


Vjp = Callable[[Expr, tuple[Expr, ...], Expr], tuple[Expr | None, ...]]


@dataclass(frozen=True)
class Op:
    name: str  # the IR's name (Apply.op)
    arity: int
    kind: Kind
    spelling: str | None = None  # a spec function name; None for operators and internal ops
    torch: Callable[..., torch.Tensor] | None = None  # on tensors broadcast to the node's dims
    sympy: Callable[..., Any] | None = None
    vjp: Vjp | None = None
    literal_args: tuple[int, ...] = ()  # operands that must be numbers in the spec


# ---- IR builders for the derivative rules (no folding: the printers fold) ----


def _node(op: str, *args: Expr) -> Apply:
    """An elementwise node; its operands nest by dim name, so the result has the
    dims of the largest one."""
    return Apply(max((a.dims for a in args), key=len), op, args)


def _c(value: float) -> Const:
    return Const((), value)


def _mul(a: Expr, b: Expr) -> Apply:
    return _node("mul", a, b)


def _select(cond: Expr, a: Expr, b: Expr) -> Apply:
    return _node("select", cond, a, b)


# ---- recc's tie rule, and the functions torch and sympy spell differently ----


def broadcast_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`value` broadcast to the shape of `value` and `like` together."""
    return torch.broadcast_to(value, torch.broadcast_shapes(value.shape, like.shape))


class _PositiveOfReal(sympy.Function):
    """A sympy function real for real arguments and positive for finite ones."""

    def _eval_is_extended_real(self):
        return self.args[0].is_extended_real

    def _eval_is_positive(self):  # 0 only at -oo, which eval folds
        return True if self.args[0].is_real else None


class sigmoid(_PositiveOfReal):  # noqa: N801 - named like the spec function
    @classmethod
    def eval(cls, x):
        if x.is_number:  # any constant, e.g. exp(-1), gets its closed form
            return 1 / (1 + sympy.exp(-x))
        return None

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)


class softplus(_PositiveOfReal):  # noqa: N801
    @classmethod
    def eval(cls, x):
        if x.is_number:
            return sympy.log(1 + sympy.exp(x))
        return None

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


# numpy formulas for the sympy functions above (sympy.lambdify's modules)
NUMPY_FUNCTIONS = {
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "softplus": lambda x: np.logaddexp(0.0, x),
}


def _lattice(op, a, b):
    """sympy Max/Min that never raise: sympy refuses to order values it cannot
    prove real (log of a negative constant, say); those stay unevaluated, which
    the classifier treats like any other non-affine term."""
    try:
        return op(a, b)
    except ValueError:
        return op(a, b, evaluate=False)


# ---- derivative rules: g is the cotangent, xs the operands, y the node ----


def _d_add(g, xs, y):
    return g, g


def _d_sub(g, xs, y):
    return g, _node("neg", g)


def _d_mul(g, xs, y):
    return _mul(g, xs[1]), _mul(g, xs[0])


def _d_div(g, xs, y):
    # torch's: -g * ((a / b) / b), so (a / b) / b overflowing to inf makes 0 * inf NaN
    return _node("div", g, xs[1]), _mul(_node("neg", g), _node("div", y, xs[1]))


def _d_neg(g, xs, y):
    return (_node("neg", g),)


def _d_lattice(picks: str) -> Vjp:
    def vjp(g, xs, y):
        first = _node(picks, *xs)  # ties and a NaN first operand route to the first
        return _select(first, g, _c(0.0)), _select(first, _c(0.0), g)

    return vjp


def _d_pow(g, xs, y):
    x, p = xs
    assert isinstance(p, Const), "pow's exponent is a number (checked when the IR is built)"
    if p.value == 0.0:
        return None, None  # x ** 0 is 1: torch passes no gradient
    return _mul(g, _mul(p, _node("pow", x, _c(p.value - 1.0)))), None


def _d_exp(g, xs, y):
    return (_mul(g, y),)


def _d_exp2(g, xs, y):
    return (_mul(g, _mul(y, _c(math.log(2.0)))),)


def _d_log(g, xs, y):
    return (_node("div", g, xs[0]),)


def _d_sqrt(g, xs, y):
    return (_node("div", _mul(g, _c(0.5)), y),)


def _d_abs(g, xs, y):
    (x,) = xs  # torch's sign: 0 at 0 (and for NaN)
    negative = _select(_node("gt", _c(0.0), x), _c(-1.0), _c(0.0))
    return (_mul(g, _select(_node("gt", x, _c(0.0)), _c(1.0), negative)),)


def _d_sigmoid(g, xs, y):
    return (_mul(g, _mul(y, _node("sub", _c(1.0), y))),)


def _d_log_sigmoid(g, xs, y):
    return (_mul(g, _node("sigmoid", _node("neg", xs[0]))),)


def _d_tanh(g, xs, y):
    return (_mul(g, _node("sub", _c(1.0), _mul(y, y))),)


def _d_softplus(g, xs, y):
    (x,) = xs  # torch's: slope 1 above its threshold 20, sigmoid(x) below
    return (_mul(g, _select(_node("gt", x, _c(20.0)), _c(1.0), _node("sigmoid", x))),)


def _d_relu(g, xs, y):
    # torch's: 0 where relu(x) <= 0 (at 0 too), g elsewhere (NaN included)
    return (_select(_node("le", y, _c(0.0)), _c(0.0), g),)


def _d_silu(g, xs, y):
    (x,) = xs
    s = _node("sigmoid", x)
    return (_mul(g, _mul(s, _node("add", _c(1.0), _mul(x, _node("sub", _c(1.0), s))))),)


def _d_cos(g, xs, y):
    return (_mul(g, _node("neg", _node("sin", xs[0]))),)


def _d_sin(g, xs, y):
    return (_mul(g, _node("cos", xs[0])),)


def _sympy_max(a, b):
    return _lattice(sympy.Max, a, b)


def _sympy_min(a, b):
    return _lattice(sympy.Min, a, b)


E, S, I, R = Kind.ELEMENTWISE, Kind.STRUCTURAL, Kind.INTERNAL, Kind.REDUCTION
F = torch.nn.functional

# name, arity, kind, spelling, torch, sympy, vjp
_TABLE = (
    # operators: the grammar spells them + - * / and unary -
    Op("add", 2, E, None, torch.add, lambda a, b: a + b, _d_add),
    Op("sub", 2, E, None, torch.sub, lambda a, b: a - b, _d_sub),
    Op("mul", 2, E, None, torch.mul, lambda a, b: a * b, _d_mul),
    Op("div", 2, E, None, torch.div, lambda a, b: a / b, _d_div),
    Op("neg", 1, E, None, torch.neg, lambda x: -x, _d_neg),
    # functions
    Op("max", 2, E, "max", maximum, _sympy_max, _d_lattice("max_picks_first")),
    Op("min", 2, E, "min", minimum, _sympy_min, _d_lattice("min_picks_first")),
    Op("pow", 2, E, "pow", torch.pow, lambda a, b: a**b, _d_pow, literal_args=(1,)),
    Op("exp", 1, E, "exp", torch.exp, sympy.exp, _d_exp),
    Op("exp2", 1, E, "exp2", torch.exp2, lambda x: 2**x, _d_exp2),
    Op("log", 1, E, "log", torch.log, sympy.log, _d_log),
    Op("sqrt", 1, E, "sqrt", torch.sqrt, sympy.sqrt, _d_sqrt),
    Op("abs", 1, E, "abs", torch.abs, sympy.Abs, _d_abs),
    Op("sigmoid", 1, E, "sigmoid", torch.sigmoid, sigmoid, _d_sigmoid),
    Op("log_sigmoid", 1, E, "log_sigmoid", F.logsigmoid, lambda x: -softplus(-x), _d_log_sigmoid),
    Op("tanh", 1, E, "tanh", torch.tanh, sympy.tanh, _d_tanh),
    Op("softplus", 1, E, "softplus", F.softplus, softplus, _d_softplus),
    Op("relu", 1, E, "relu", torch.relu, lambda x: sympy.Max(x, 0), _d_relu),
    Op("silu", 1, E, "silu", F.silu, lambda x: x * sigmoid(x), _d_silu),
    Op("cos", 1, E, "cos", torch.cos, sympy.cos, _d_cos),
    Op("sin", 1, E, "sin", torch.sin, sympy.sin, _d_sin),
    # structural: their shapes are their meaning; each consumer handles them
    Op("matmul", 2, S),  # spelled '@'
    Op("outer", 2, S, "outer"),
    Op("dot", 2, S, "dot"),
    Op("sum", 1, S, "sum"),
    Op("transpose", 1, S, "transpose"),  # also spelled '.T'
    # internal: the derivative rules' comparisons (booleans) and selection
    Op("gt", 2, I, torch=torch.gt),
    Op("le", 2, I, torch=torch.le),
    Op("max_picks_first", 2, I, torch=max_picks_first),
    Op("min_picks_first", 2, I, torch=min_picks_first),
    Op("select", 3, I, torch=torch.where),
    Op("broadcast_like", 2, I, torch=broadcast_like),  # the first, broadcast to both's dims
    # reductions of the derivatives (recc.ir.autodiff): shapes are their meaning
    Op("sum_to", 1, R),  # over the operand's dims the node lacks
    Op("sum_steps", 1, R),  # over the steps (leading axes) the evaluation covers
)

OPS: dict[str, Op] = {op.name: op for op in _TABLE}

# Spec function name -> op, for the ops a spec calls by name.
SPELLED: dict[str, Op] = {op.spelling: op for op in _TABLE if op.spelling is not None}

ELEMENTWISE = frozenset(op.name for op in _TABLE if op.kind is Kind.ELEMENTWISE)
STRUCTURAL = frozenset(op.name for op in _TABLE if op.kind is Kind.STRUCTURAL)
INTERNAL = frozenset(op.name for op in _TABLE if op.kind is Kind.INTERNAL)
REDUCTION = frozenset(op.name for op in _TABLE if op.kind is Kind.REDUCTION)
