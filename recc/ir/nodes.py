"""The typed tensor IR: frozen dataclasses, shapes as tuples of dim names.

Stage: ir. A `Recurrence` is the whole spec after name resolution and shape
inference. Expressions are trees of `Const`, `Ref` and `Apply`; spans point
back to the spec and do not take part in equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recc.errors import Span

Dims = tuple[str, ...]

# The operators are in recc.ir.ops (the op table).

# Roles of a name.
INPUT, PARAM, STATE, LET = "input", "param", "state", "let"


@dataclass(frozen=True)
class Expr:
    dims: Dims
    span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Const(Expr):
    value: float


@dataclass(frozen=True)
class Ref(Expr):
    """A name: an input, param, state or let. In an output, a state is its new value.
    A dim read as a value (`q / sqrt(K)`) is a scalar param named after the dim,
    whose value every call binds to the dim's size (`Recurrence.dim_values`)."""

    name: str
    role: str


@dataclass(frozen=True)
class Apply(Expr):
    op: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class TensorDecl:
    name: str
    dims: Dims
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class StateDecl:
    name: str
    dims: Dims
    init: float
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Definition:
    """`let name = expr`, `update name = expr` or `output name = expr`."""

    name: str
    expr: Expr
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Recurrence:
    name: str
    dims: Dims
    inputs: tuple[TensorDecl, ...]
    params: tuple[TensorDecl, ...]
    states: tuple[StateDecl, ...]
    lets: tuple[Definition, ...]
    updates: tuple[Definition, ...]  # one per state, in the order of `states`
    outputs: tuple[Definition, ...]
    dim_values: tuple[str, ...] = ()  # dims read as values, in `dims` order
    source: str = field(default="", compare=False, repr=False)
    filename: str = field(default="<spec>", compare=False, repr=False)

    def value_params(self) -> tuple[TensorDecl, ...]:
        """Every param a step reads: the declared ones, then one scalar per dim read
        as a value (bound to the dim's size by `recc.signature.bind`)."""
        return (*self.params, *(TensorDecl(d, ()) for d in self.dim_values))

    def state(self, name: str) -> StateDecl:
        return next(s for s in self.states if s.name == name)

    def update_of(self, name: str) -> Expr:
        return next(u.expr for u in self.updates if u.name == name)

    def line(self, span: Span | None) -> str:
        """The spec line a span points to, for comments in generated code."""
        if span is None:
            return ""
        lines = self.source.splitlines()
        return lines[span.line - 1].strip() if 0 < span.line <= len(lines) else ""


def walk(expr: Expr):
    """All nodes of an expression tree, parents before children."""
    yield expr
    if isinstance(expr, Apply):
        for arg in expr.args:
            yield from walk(arg)


def name_maker(rec: Recurrence):
    """`fresh(base)`: `base`, or `base_1`, `base_2`, ..., whichever no name of `rec`
    (dims, tensors, states, lets, outputs) and no earlier `fresh` name spells."""
    taken = {*rec.dims, *(d.name for d in (*rec.inputs, *rec.params, *rec.states))}
    taken |= {d.name for d in (*rec.lets, *rec.outputs)}

    def fresh(base: str) -> str:
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    return fresh


def lets_read(rec: Recurrence, exprs) -> set[str]:
    """The names of the lets `exprs` read, directly or through other lets."""
    lets = {let.name: let.expr for let in rec.lets}
    found: set[str] = set()
    todo = list(exprs)
    while todo:
        for node in walk(todo.pop()):
            if isinstance(node, Ref) and node.name in lets and node.name not in found:
                found.add(node.name)
                todo.append(lets[node.name])
    return found


def substitute(expr: Expr, bindings: dict[str, Expr]) -> Expr:
    """`expr` with each reference to a name in `bindings` replaced by its binding,
    structure and spans otherwise kept (nothing folded)."""
    if isinstance(expr, Ref):
        return bindings.get(expr.name, expr)
    if isinstance(expr, Apply):
        args = tuple(substitute(a, bindings) for a in expr.args)
        return expr if args == expr.args else Apply(expr.dims, expr.op, args, span=expr.span)
    return expr


def embed(small: Dims, large: Dims) -> tuple[int, ...] | None:
    """Positions of `small`'s dims inside `large` (name-based broadcasting).

    Returns None if `small` is not a subsequence of `large`, and raises
    ValueError if it fits in more than one way (ambiguous).
    """
    found: list[tuple[int, ...]] = []

    def search(i: int, start: int, chosen: tuple[int, ...]) -> None:
        if len(found) > 1:
            return
        if i == len(small):
            found.append(chosen)
            return
        for j in range(start, len(large)):
            if large[j] == small[i]:
                search(i + 1, j + 1, chosen + (j,))

    search(0, 0, ())
    if not found:
        return None
    if len(found) > 1:
        raise ValueError("ambiguous")
    return found[0]
