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

Reductions mask out padded lanes. A spec whose expressions repeat a dim in
one shape, or use a dim outside the layout, cannot be laid out this way;
`unsupported_reason` says so and the caller keeps the torch backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recc.analysis.rewrite import ExprOps, NotCanonical
from recc.backends.names import Namespace
from recc.ir.evaluate import evaluate
from recc.ir.nodes import Apply, Const, Dims, Expr, Ref, walk
from recc.ir.ops import ELEMENTWISE, OPS

# The name a derivative rule's cotangent has while the emitter prints the rule
# (no spec name can be spelled so).
COTANGENT = "<cotangent>"

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
}


def inline(expr: Expr, names: dict[str, str]) -> str:
    """`expr` printed in one piece, without temporaries (the small closed forms of the
    scans' combine functions); `names`: each reference's variable."""
    if isinstance(expr, Ref):
        return names[expr.name]
    if isinstance(expr, Const):
        return literal(expr.value)
    assert isinstance(expr, Apply) and expr.op in PRINT, expr
    return PRINT[expr.op].format(*(inline(a, names) for a in expr.args))


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


def contracted_dims(exprs: list[Expr]) -> set[str]:
    """Dims some reduction sums over: they cannot be split across programs."""
    found: set[str] = set()
    for expr in exprs:
        for node in walk(expr):
            if isinstance(node, Apply):
                if node.op == "matmul":
                    found.add(node.args[0].dims[-1])
                elif node.op in ("dot", "sum"):
                    found.update(node.args[0].dims)
    return found


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
        name = self.fresh()
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
        raise AssertionError(op)  # pragma: no cover

    def _sum(self, value: str, dims: Dims) -> str:
        for dim in dims:
            masked = f"tl.where({self.layout.mask(dim)}, {value}, 0.0)"
            value = f"tl.sum({masked}, axis={self.layout.axis(dim)}, keep_dims=True)"
        return value


Axes = tuple[bool, Dims]  # (has a time axis, dims): the full extents of a tile


class TileAdjoint:
    """Reverse-mode AD of emitted tile expressions, as Triton statements.

    Works on the forward temporaries of a `TileEmitter` (which must already
    have emitted every node). Cotangents accumulate per node, and per name
    for inputs, params, states and lets; a contribution is summed over the
    axes its target lacks (masking padded lanes and steps) before it is
    added. `run` processes nodes in reverse topological order; call it with
    `stop_at_names=True` first for the state-dependent part (the readouts),
    then again for the rest once every seed is in.
    """

    def __init__(
        self, emitter: TileEmitter, timed_names: dict[str, bool], cite=lambda span: ""
    ) -> None:
        """`cite(span)`: the comment text naming a spec line (empty: no comments)."""
        self.cite = cite
        self.e = emitter
        self.layout = emitter.layout
        self.timed_names = timed_names
        self.cotangent: dict[object, str] = {}  # node or ("name", n) -> accumulator variable
        self.done: set[object] = set()
        self.lines: list[str] = []

    # -- axes --
    def timed(self, expr: Expr) -> bool:
        return any(isinstance(n, Ref) and self.timed_names.get(n.name, False) for n in walk(expr))

    def axes(self, expr: Expr) -> Axes:
        return (self.timed(expr), expr.dims)

    def shape(self, axes: Axes) -> str:
        return self.layout.shape(axes[1], time=axes[0])

    def reduce(self, value: str, frm: Axes, to: Axes) -> str:
        for dim in frm[1]:
            if dim not in to[1]:
                masked = f"tl.where({self.layout.mask(dim)}, {value}, 0.0)"
                value = f"tl.sum({masked}, axis={self.layout.axis(dim)}, keep_dims=True)"
        if frm[0] and not to[0]:
            mask = self.layout.mask(TIME)
            value = f"tl.sum(tl.where({mask}, {value}, 0.0), axis=0, keep_dims=True)"
        return value

    @staticmethod
    def union(*axes: Axes) -> Axes:
        dims: list[str] = []
        for _, ds in axes:
            dims += [d for d in ds if d not in dims]
        return (any(t for t, _ in axes), tuple(dims))

    # -- accumulation --
    def key(self, expr: Expr) -> object:
        return ("name", expr.name) if isinstance(expr, Ref) else expr

    def add(self, target: Expr, value: str, axes: Axes) -> None:
        if isinstance(target, Const):
            return
        target_axes = self.axes(target) if not isinstance(target, Ref) else self.name_axes(target)
        value = self.reduce(value, axes, target_axes)
        key = self.key(target)
        if key in self.cotangent:
            var = self.cotangent[key]
            self.lines.append(f"{var} = {var} + {value}")
        else:
            var = self.e.ns.unique(self.cotangent_name(target))
            self.cotangent[key] = var
            self.lines.append(f"{var} = {value}")

    def cotangent_name(self, target: Expr) -> str:
        """What a cotangent is called: `d_k` for spec name k, `d_t5` for the node the
        kernel holds in `_t5` (`d_node` for one it holds in no variable)."""
        if isinstance(target, Ref):
            name = target.name
            if not name.isidentifier():  # an internal name, e.g. "old state h"
                name = "_".join(name.split())
            return f"d_{name}"
        held = self.e.memo.get(target)
        return f"d{held}" if held is not None and held.startswith("_") else "d_node"

    def name_axes(self, ref: Ref) -> Axes:
        return (self.timed_names.get(ref.name, False), ref.dims)

    def seed(self, expr: Expr, var: str, axes: Axes) -> None:
        self.add(expr, var, axes)

    def name_cotangent(self, name: str) -> str | None:
        return self.cotangent.get(("name", name))

    # -- traversal --
    def _order(self, roots: list[Expr], lets: dict[str, Expr], stop_at_names: bool) -> list:
        """Nodes (and ("let", name) markers) in topological order, parents last.

        stop_at_names: only the nodes that depend on a state, directly or through
        one of `lets` (which are then the state-dependent lets)."""
        order: list = []
        seen: set = set()

        def depends(node: Expr) -> bool:
            return any(
                isinstance(n, Ref) and (n.role == "state" or n.name in lets) for n in walk(node)
            )

        def visit(node: Expr) -> None:
            if isinstance(node, Const):
                return
            if isinstance(node, Ref):
                if node.name in lets:
                    key = ("let", node.name)
                    if key not in seen:
                        seen.add(key)
                        visit(lets[node.name])
                        order.append(key)
                return
            if node in seen or not any(isinstance(n, Ref) for n in walk(node)):
                return  # constant subtrees (folded when emitted) take no cotangent
            if stop_at_names and not depends(node):
                return
            seen.add(node)
            for arg in node.args:
                visit(arg)
            if node not in self.done:  # a processed node's children may still be pending
                order.append(node)

        for root in roots:
            visit(root)
        return order

    def run(self, roots: list[Expr], lets=(), stop_at_names: bool = False) -> list[str]:
        """Statements that push every seeded cotangent back through `roots`.

        `lets`: the let definitions to differentiate through (others are leaves,
        whose cotangents stay on their names)."""
        let_exprs = {let.name: let.expr for let in lets}
        spans = {let.name: let.span for let in lets}
        order = self._order(roots, let_exprs, stop_at_names)
        for item in reversed(order):
            if isinstance(item, tuple):  # ("let", name): hand its cotangent to its expression
                ct = self.cotangent.get(("name", item[1]))
                expr = let_exprs[item[1]]
                if ct is not None:
                    cited = self.cite(spans[item[1]])
                    if cited:
                        self.lines.append(f"# back through {cited}")
                    self.add(expr, ct, (self.timed_names.get(item[1], False), expr.dims))
                continue
            self.done.add(item)
            ct = self.cotangent.get(item)
            if ct is None:
                continue
            axes = self.axes(item)
            full = f"({ct} + tl.zeros({self.shape(axes)}, DTYPE))"
            self._rules(item, full, axes)
        lines, self.lines = self.lines, []
        return lines

    def _rules(self, node: Apply, ct: str, axes: Axes) -> None:
        op = node.op
        args = node.args
        if op in ELEMENTWISE:
            self._table_rule(node, ct, axes)
            return
        v = [self.e.emit(a) for a in args]  # forward values (already emitted)
        arg_axes = [self.axes(a) if not isinstance(a, Ref) else self.name_axes(a) for a in args]
        if isinstance(args[0], Const):
            arg_axes[0] = (False, ())
        if len(args) > 1 and isinstance(args[1], Const):
            arg_axes[1] = (False, ())
        both = self.union(axes, *arg_axes)
        if op in ("outer", "dot", "matmul"):
            self.add(args[0], f"({ct} * {v[1]})", both)
            self.add(args[1], f"({ct} * {v[0]})", both)
        elif op == "sum":
            self.add(
                args[0],
                f"({ct} + tl.zeros({self.shape(arg_axes[0])}, DTYPE))",
                self.union(axes, arg_axes[0]),
            )
        elif op == "transpose":
            self.add(args[0], ct, axes)
        else:  # pragma: no cover
            raise AssertionError(op)

    def _table_rule(self, node: Apply, ct: str, axes: Axes) -> None:
        """The op table's vjp of an elementwise node, printed by the emitter.

        Each contribution has the node's axes (its operands' dims nest in the
        node's). The rule's temporaries go with the adjoint's statements and
        are forgotten after it, so no later statement reuses one out of scope."""
        g = self.e.fresh("_g")
        self.lines.append(f"{g} = {ct}")
        cotangent = Ref(node.dims, COTANGENT, "cotangent")
        contributions = OPS[node.op].vjp(cotangent, node.args, node)
        memo, lines = dict(self.e.memo), self.e.lines
        self.e.lines, self.e.names[COTANGENT] = self.lines, g
        try:
            for arg, contribution in zip(node.args, contributions):
                if contribution is None or not any(isinstance(n, Ref) for n in walk(arg)):
                    continue  # constants take no cotangent
                self.add(arg, self.e.emit(contribution), axes)
        finally:
            self.e.memo, self.e.lines = memo, lines
            del self.e.names[COTANGENT]
