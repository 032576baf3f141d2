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

from recc.ir.nodes import Apply, Const, Dims, Expr, Ref, walk

_UNARY = {
    "neg": "(-{0})",
    "exp": "tl.exp({0})",
    "log": "tl.log({0})",
    "sigmoid": "tl.sigmoid({0})",
    "tanh": "_tanh({0})",
    "softplus": "_softplus({0})",
    "relu": "tl.maximum({0}, 0.0)",
    "silu": "({0} * tl.sigmoid({0}))",
    "sqrt": "tl.sqrt({0})",
    "abs": "tl.abs({0})",
}
_BINARY = {
    "add": "({0} + {1})",
    "sub": "({0} - {1})",
    "mul": "({0} * {1})",
    "div": "({0} / {1})",
    "max": "tl.maximum({0}, {1})",
    "min": "tl.minimum({0}, {1})",
}

# Helpers every generated module defines (Triton 3.9 has no tanh / softplus).
HELPERS = """\
@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _softplus(x):
    # log(1 + exp(x)) without overflow: max(x, 0) + log(1 + exp(-|x|))
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
"""


def literal(value: float) -> str:
    if value == float("inf"):
        return 'float("inf")'
    if value == float("-inf"):
        return 'float("-inf")'
    return repr(float(value))


@dataclass(frozen=True)
class TileLayout:
    """Axis 0 is time; axis i + 1 is dims[i]."""

    dims: Dims

    def axis(self, dim: str) -> int:
        return 1 + self.dims.index(dim)

    def index(self, dim: str) -> str:
        """The offsets of `dim` shaped for the tile, e.g. `o_D[None, :, None]`."""
        return f"o_{dim}" + self._expand(self.axis(dim))

    def time_index(self) -> str:
        return "o_T" + self._expand(0)

    def mask(self, dim: str) -> str:
        return f"m_{dim}"

    def _expand(self, axis: int) -> str:
        rank = 1 + len(self.dims)
        return "[" + ", ".join(":" if i == axis else "None" for i in range(rank)) + "]"

    def shape(self, dims: Dims, time: bool = True) -> str:
        """A block shape list for values with these dims, e.g. `[BLOCK_T, BLOCK_D, 1]`."""
        parts = ["BLOCK_T" if time else "1"]
        parts += [f"BLOCK_{d}" if d in dims else "1" for d in self.dims]
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
    that already hold their tiles. Equal subexpressions share a temporary.
    """

    layout: TileLayout
    names: dict[str, str]
    lines: list[str] = field(default_factory=list)
    memo: dict[Expr, str] = field(default_factory=dict)
    counter: list[int] = field(default_factory=lambda: [0])

    def fresh(self) -> str:
        self.counter[0] += 1
        return f"_t{self.counter[0]}"

    def emit(self, expr: Expr) -> str:
        """A Triton expression (a variable or literal) holding `expr`'s tile."""
        if isinstance(expr, Const):
            return literal(expr.value)
        if isinstance(expr, Ref):
            return self.names[expr.name]
        assert isinstance(expr, Apply)
        if expr in self.memo:
            return self.memo[expr]
        args = [self.emit(a) for a in expr.args]
        code = self._code(expr, args)
        name = self.fresh()
        self.lines.append(f"{name} = {code}")
        self.memo[expr] = name
        return name

    def _code(self, expr: Apply, args: list[str]) -> str:
        op = expr.op
        if op in _BINARY:
            return _BINARY[op].format(*args)
        if op in _UNARY:
            return _UNARY[op].format(*args)
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
