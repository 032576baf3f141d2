"""IR expressions as Triton code over a name-indexed tile.

Stage: backend (triton). A kernel works on one tile whose axes are time plus
the spec's dims, in a fixed order (`TileLayout`): every value in the kernel
is a Triton tensor of rank 1 + len(dims), with the full block size on the
axes it has and 1 on the axes it lacks. In that layout the spec's operators
become plain Triton:

  elementwise ops            broadcasting does the rest
  outer(u, v)                u * v
  dot(u, v), sum(x)          tl.sum over the dims' axes (keep_dims)
  a @ b                      tl.sum(a * b) over the contracted dim's axis
  x.T                        x (axes are by name, not position)
  sum_to, sum_steps          tl.sum over the dims' axes, over time (axis 0)

Reductions mask out padded lanes. A spec whose expressions repeat a dim in
one shape, or use a dim outside the layout, cannot be laid out this way;
`unsupported_reason` says so and the caller keeps the torch backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recc.backends.names import Namespace
from recc.backends.triton.wrap import ungrouped
from recc.ir.evaluate import evaluate
from recc.ir.fold import ExprOps, NotCanonical
from recc.ir.nodes import Apply, Const, Dims, Expr, Ref, walk

# max and min propagate NaN from either side, as the interpreter's do (Triton's
# default would return the other operand).
NAN = "propagate_nan=tl.PropagateNan.ALL"


# One line per op of the op table (recc.ir.ops); `pow` is printed by `_pow` from
# its literal exponent, the structural ops by `TileEmitter._code`.
PRINT = {
    "add": "({0} + {1})",
    "sub": "({0} - {1})",
    "mul": "({0} * {1})",
    "div": "({0} / {1})",
    "neg": "(-{0})",
    "max": "tl.maximum({0}, {1}, " + NAN + ")",
    "min": "tl.minimum({0}, {1}, " + NAN + ")",
    "exp": "tl.exp({0})",
    "exp2": "tl.exp2({0})",
    "log": "tl.log({0})",
    "sqrt": "tl.sqrt({0})",
    "abs": "tl.abs({0})",
    "sigmoid": "tl.sigmoid({0})",
    "log_sigmoid": "_log_sigmoid({0})",
    "tanh": "_tanh({0})",
    "softplus": "_softplus({0})",
    "relu": "tl.maximum({0}, 0.0, " + NAN + ")",
    "silu": "({0} * tl.sigmoid({0}))",
    "cos": "tl.cos({0})",
    "sin": "tl.sin({0})",
    # internal: the derivative rules' comparisons and selection
    "gt": "({0} > {1})",
    "le": "({0} <= {1})",
    "max_picks_first": "(({0} >= {1}) | ({0} != {0}))",
    "min_picks_first": "(({0} <= {1}) | ({0} != {0}))",
    "select": "tl.where({0}, {1}, {2})",
    "broadcast_like": "({0} + tl.zeros_like({1}))",
}


def inline(expr: Expr, names: dict[str, str]) -> str:
    """`expr` printed in one piece, without temporaries (the small closed forms of the
    scans' combine functions); `names`: each reference's variable."""
    if isinstance(expr, Ref):
        return names[expr.name]
    if isinstance(expr, Const):
        return literal(expr.value)
    assert isinstance(expr, Apply) and expr.op in PRINT, expr
    args = [inline(a, names) for a in expr.args]
    for i, a in enumerate(expr.args):
        if _needs_no_brackets(expr.op, i, a):
            args[i] = ungrouped(args[i])
    return PRINT[expr.op].format(*args)


def _needs_no_brackets(op: str, position: int, arg: Expr) -> bool:
    """Whether operand `arg` of `op` parses the same without its outer brackets: an
    argument of a call (tl.where(n > 1.0, ...)), a product in a sum, and the left
    operand of the same left-associative operator (a + b + c is (a + b) + c: the
    same tree, so the same rounding)."""
    if not isinstance(arg, Apply):
        return False
    if _call_argument(PRINT[op], position):
        return True
    if arg.op not in ("add", "mul"):
        return False
    return (op == "add" and arg.op == "mul") or (op == arg.op and position == 0)


def _call_argument(form: str, position: int) -> bool:
    """Whether every `{position}` in a PRINT format is a whole argument of a call."""
    if form.startswith("("):
        return False
    slot = "{" + str(position) + "}"
    pieces = form.split(slot)
    return len(pieces) > 1 and all(
        before.endswith(("(", ", ")) and after.startswith((",", ")"))
        for before, after in zip(pieces[:-1], pieces[1:])
    )


# Exponents with |p| up to this are products (and a square root for halves), as
# exact as torch's pow; others are exp(p * log|x|), whose relative error is about
# |p * log(x)| units in the last place (documented in docs/language.md).
_POW_PRODUCTS = 4


def exact_pow(p: float) -> bool:
    """Whether `_pow` prints x ** p as products, not through exp and log."""
    return (2 * p).is_integer() and abs(p) <= _POW_PRODUCTS


def _pow(x: str, p: float) -> str:
    """x ** p for a literal exponent p, with torch's values at 0, -0, inf and NaN."""
    if p == 0.0:
        return f"(tl.zeros_like({x}) + 1.0)"  # torch's pow(x, 0) is 1, even for NaN
    if abs(p) == 0.5:  # torch's own special cases: sqrt and rsqrt
        return f"tl.sqrt({x})" if p > 0 else f"(1.0 / tl.sqrt({x}))"
    if p.is_integer() and abs(p) <= _POW_PRODUCTS:
        product = "(" + " * ".join([x] * int(abs(p))) + ")"
        return product if p > 0 else f"(1.0 / {product})"
    if p.is_integer():  # exp-log of |x|, with the sign of an odd power (-0 included)
        magnitude = f"tl.exp({p!r} * tl.log(tl.abs({x})))"
        if p % 2 == 0:
            return magnitude
        return f"tl.where(({x} < 0.0) | (1.0 / {x} < 0.0), -{magnitude}, {magnitude})"
    base = f"({x} + 0.0)"  # -0 is +0 here: x ** 1.5 has no sign
    if exact_pow(p):
        whole = int(abs(p))  # x ** (k + 1/2) = x ** k * sqrt(x)
        value = "(" + " * ".join([base] * whole + [f"tl.sqrt({base})"]) + ")"
        value = value if p > 0 else f"(1.0 / {value})"
    else:
        value = f"tl.exp({p!r} * tl.log({base}))"  # NaN below 0, as torch's
    at_minus_inf = 'float("inf")' if p > 0 else "0.0"  # C's pow(-inf, p)
    return f"tl.where({x} == -float('inf'), {at_minus_inf}, {value})"


# Helpers every generated module defines (Triton 3.9 has no tanh, softplus,
# expm1 or log1p in `tl`, and its libdevice ones do not run in the interpreter).
# Each keeps full relative precision, as torch's do: 2 * sigmoid(2x) - 1 would
# lose it near 0 (tanh(1e-6) off by 1e-10 in fp64, 1e-2 in fp32), and
# log(1 + exp(x)) below -17 in fp64 (-8 in fp32).
HELPERS = """\
@triton.jit
def _expm1(x):
    # exp(x) - 1 (Kahan): (u - 1) * x / log(u) cancels the rounding of u = exp(x)
    u = tl.exp(x)
    um1 = u - 1.0
    return tl.where(u == 1.0, x, tl.where(um1 == -1.0, -1.0, um1 * x / tl.log(u)))


@triton.jit
def _log1p(x):
    # log(1 + x) for x >= 0 (Goldberg): log(w) * x / (w - 1) cancels the rounding of w
    w = 1.0 + x
    return tl.where(w == 1.0, x, tl.log(w) * (x / (w - 1.0)))


@triton.jit
def _tanh(x):
    # sign(x) * -expm1(-2|x|) / (2 + expm1(-2|x|)): no cancellation at any |x|
    e = _expm1(-2.0 * tl.abs(x))
    t = -e / (2.0 + e)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def _log_sigmoid(x):
    # torch's: min(x, 0) - log1p(exp(-|x|))
    return tl.minimum(x, 0.0) - _log1p(tl.exp(-tl.abs(x)))


@triton.jit
def _softplus(x):
    # torch's softplus: x above its threshold 20, else log1p(exp(x))
    return tl.where(x > 20.0, x, _log1p(tl.exp(x)))
"""


# The tie rules' comparisons (their PRINT lines add the first operand's NaN test).
_TIE_RULES = {"max_picks_first": ">=", "min_picks_first": "<="}


def literal(value: float) -> str:
    if value == float("inf"):
        return 'float("inf")'
    if value == float("-inf"):
        return 'float("-inf")'
    return repr(float(value))


TIME = "<time>"  # the time axis's key in a layout (no dim can be named so)


@dataclass(frozen=True)
class TileLayout:
    """Axis 0 is time; axis i + 1 is dims[i].

    `names` holds the kernel's identifiers (from its `Namespace`) for each
    axis's offsets ("o_D"), mask ("m_D") and block size ("BLOCK_D"); time's
    are keyed TIME. Without names (a layout only for planning) they are None.
    """

    dims: Dims
    names: dict[tuple[str, str], str] | None = field(default=None, compare=False, hash=False)

    def with_names(self, ns: Namespace) -> TileLayout:
        names = {}
        for axis in (TIME, *self.dims):
            label = "T" if axis == TIME else axis
            names[("offsets", axis)] = ns.name(("offsets", axis), f"o_{label}")
            names[("mask", axis)] = ns.name(("mask", axis), f"m_{label}")
            names[("block", axis)] = ns.name(("block", axis), f"BLOCK_{label}")
        return TileLayout(self.dims, names)

    def _name(self, kind: str, axis: str) -> str:
        assert self.names is not None, "a layout with names is needed to emit code"
        return self.names[(kind, axis)]

    def axis(self, dim: str) -> int:
        return 1 + self.dims.index(dim)

    def offsets(self, dim: str) -> str:
        return self._name("offsets", dim)

    def block(self, dim: str) -> str:
        return self._name("block", dim)

    def index(self, dim: str) -> str:
        """The offsets of `dim` shaped for the tile, e.g. `o_D[None, :, None]`."""
        return self.offsets(dim) + self._expand(self.axis(dim))

    def time_index(self) -> str:
        return self.offsets(TIME) + self._expand(0)

    def mask(self, dim: str) -> str:
        return self._name("mask", dim)

    def _expand(self, axis: int) -> str:
        rank = 1 + len(self.dims)
        return "[" + ", ".join(":" if i == axis else "None" for i in range(rank)) + "]"

    def shape(self, dims: Dims, time: bool = True) -> str:
        """A block shape list for values with these dims, e.g. `[BLOCK_T, BLOCK_D, 1]`."""
        parts = [self.block(TIME) if time else "1"]
        parts += [self.block(d) if d in dims else "1" for d in self.dims]
        return "[" + ", ".join(parts) + "]"


def unsupported_reason(exprs: list[Expr], layout: TileLayout) -> str | None:
    for expr in exprs:
        for node in walk(expr):
            if len(set(node.dims)) != len(node.dims):
                return f"a value of shape {list(node.dims)} repeats a dim"
            outside = [d for d in node.dims if d not in layout.dims]
            if outside:
                return f"dim {outside[0]} is not on the kernel's tile"
    return None


@dataclass
class TileEmitter:
    """Emits Triton statements for IR expressions, one temporary per distinct node.

    `names` maps spec names (inputs, params, lets, states) to kernel variables
    that already hold their tiles. Equal subexpressions share a temporary,
    named by the kernel's `Namespace`. One emitter is one meaning of the names:
    a state read by an update is its old value, by an output its new one, so
    the two get emitters of their own (sharing the namespace).
    """

    layout: TileLayout
    names: dict[str, str]
    ns: Namespace
    lines: list[str] = field(default_factory=list)
    memo: dict[Expr, str] = field(default_factory=dict)
    # what to call the temporary of an expression, if not `_t<n>` (a cotangent is
    # named after what it differentiates: `d_k`, `d_t5`)
    labels: dict[Expr, str] = field(default_factory=dict)

    def fresh(self, prefix: str = "_t") -> str:
        return self.ns.fresh(prefix)

    def emit(self, expr: Expr) -> str:
        """A Triton expression (a variable or literal) holding `expr`'s tile."""
        if isinstance(expr, Const):
            return literal(expr.value)
        if isinstance(expr, Ref):
            return self.names[expr.name]
        assert isinstance(expr, Apply)
        if expr in self.memo:
            return self.memo[expr]
        if not any(isinstance(n, Ref) for n in walk(expr)):
            # A constant subtree: fold it in Python, in fp64 (Triton would evaluate
            # tl.exp(-1.0) on an fp32 constant).
            try:
                folded = evaluate(expr, {}, ExprOps())
            except NotCanonical:
                folded = None
            if isinstance(folded, Const):
                return literal(folded.value)
        args = [self.emit(a) for a in expr.args]
        constant = [not any(isinstance(n, Ref) for n in walk(a)) for a in expr.args]
        if expr.op in _TIE_RULES and constant[0]:
            # a constant first operand is never NaN (spec constants are checked): only
            # the comparison is left, a Python float against a tile
            code = f"({args[0]} {_TIE_RULES[expr.op]} {args[1]})"
        else:
            for i, is_constant in enumerate(constant):
                if expr.op not in ("gt", "le") and is_constant:
                    args[i] = f"tl.full([], {args[i]}, DTYPE)"  # typed: the compute dtype
            code = self._code(expr, args)
        label = self.labels.get(expr)
        name = self.ns.unique(label) if label is not None else self.fresh()
        self.lines.append(f"{name} = {code}")
        self.memo[expr] = name
        return name

    def _code(self, expr: Apply, args: list[str]) -> str:
        op = expr.op
        if op == "pow":
            return _pow(args[0], expr.args[1].value)
        if op in PRINT:
            return PRINT[op].format(*args)
        if op == "outer":
            return f"({args[0]} * {args[1]})"
        if op == "transpose":
            return args[0]
        if op == "dot":
            return self._sum(f"({args[0]} * {args[1]})", expr.args[0].dims)
        if op == "sum":
            return self._sum(args[0], expr.args[0].dims)
        if op == "matmul":
            return self._sum(f"({args[0]} * {args[1]})", (expr.args[0].dims[-1],))
        if op == "sum_to":
            lacking = tuple(d for d in expr.args[0].dims if d not in expr.dims)
            return self._sum(args[0], lacking)
        if op == "sum_steps":  # the tile's steps are its time axis (padded ones masked)
            masked = f"tl.where({self.layout.mask(TIME)}, {args[0]}, 0.0)"
            return f"tl.sum({masked}, axis=0, keep_dims=True)"
        raise AssertionError(op)  # pragma: no cover

    def _sum(self, value: str, dims: Dims) -> str:
        for dim in dims:
            masked = f"tl.where({self.layout.mask(dim)}, {value}, 0.0)"
            value = f"tl.sum({masked}, axis={self.layout.axis(dim)}, keep_dims=True)"
        return value
