"""Derivatives of IR expressions, as IR: `jvp`, `vjp` and the state Jacobian.

Stage: ir. The one derivative engine of recc. Its results are IR expressions
that every consumer prints or evaluates the way it handles any other IR: the
Triton backward prints `vjp`'s cotangents, the diagonal class reads its
coefficients off `jvp` (recc.analysis.linear), and `state_jacobian` says what
d(new state)/d(state) is and how it is shaped (what a Newton solver needs).

The elementwise rules are the op table's (`Op.vjp`, recc.ir.ops), which follow
torch's autograd formulas, selections included; the structural ops' rules
(matmul, outer, dot, sum, transpose) are here. An elementwise op's Jacobian is
diagonal, so its tangent is its vjp rule applied to the operand's tangent.

Broadcasting is by dim name. A cotangent always has the dims of what it
differentiates: where an operand was broadcast, its contribution is summed
over the dims it lacks (`sum_to`), and, for a value that is the same at every
step (a param, or anything computed only from params), over the steps the
evaluation covers (`sum_steps`). Which names vary over the steps is the
caller's to say (`varies`); an evaluation over one step at a time sees
`sum_steps` as the identity.

Nodes a rule builds carry the span of the node they differentiate, so
generated code can cite the spec line a derivative comes from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from recc.errors import Span
from recc.ir.nodes import Apply, Const, Dims, Expr, Ref, embed, walk
from recc.ir.ops import ELEMENTWISE, INTERNAL, OPS, STRUCTURAL

# The role of a name that holds a cotangent or a tangent a caller seeds with
# (the printers map it to a variable like any other name).
COTANGENT = "cotangent"
TANGENT = "tangent"


class NoDerivative(Exception):
    """An op the engine has no rule for (the internal ops of derivative rules)."""


# ---- node builders: explicit dims, the differentiated node's span ----


def _apply(dims: Dims, op: str, *args: Expr, span: Span | None = None) -> Apply:
    return Apply(dims, op, args, span=span)


def sum_to(value: Expr, dims: Dims, span: Span | None = None) -> Expr:
    """`value` summed over the dims `dims` lacks (its dims nest in `value`'s)."""
    if value.dims == dims:
        return value
    assert embed(dims, value.dims) is not None, (dims, value.dims)
    return _apply(dims, "sum_to", value, span=span)


def broadcast_like(value: Expr, like: Expr, span: Span | None = None) -> Expr:
    """`value` broadcast to `like`'s dims (and its steps, where `like` varies)."""
    if value.dims == like.dims:
        return value
    return _apply(like.dims, "broadcast_like", value, like, span=span)


def _add(a: Expr | None, b: Expr, span: Span | None = None) -> Expr:
    if a is None:
        return b
    dims = a.dims if len(a.dims) >= len(b.dims) else b.dims
    return _apply(dims, "add", a, b, span=span)


def _spanned(expr: Expr, span: Span | None) -> Expr:
    """`expr` with `span` on the nodes a rule built (those without a span)."""
    if span is None or not isinstance(expr, Apply) or expr.span is not None:
        return expr
    args = tuple(_spanned(a, span) for a in expr.args)
    return dataclasses.replace(expr, args=args, span=span)


def _nest(a: Dims, b: Dims) -> bool:
    """Whether one of two shapes broadcasts into the other by dim name."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    try:
        return embed(small, large) is not None
    except ValueError:
        return False


def _constant(expr: Expr) -> bool:
    return not any(isinstance(n, Ref) for n in walk(expr))


# ---- structural rules: the cotangent g has the node's dims ----


def _d_matmul(g: Expr, a: Expr, b: Expr) -> tuple[Expr, Expr]:
    """a @ b for a vector or matrix on each side (what the language allows)."""
    if len(a.dims) == 1 and len(b.dims) == 1:  # [K] @ [K] -> []
        return _apply(b.dims, "mul", g, b), _apply(a.dims, "mul", g, a)
    if len(b.dims) == 1:  # [M, K] @ [K] -> [M]
        at = _apply(a.dims[::-1], "transpose", a)
        return _apply(a.dims, "outer", g, b), _apply(b.dims, "matmul", at, g)
    if len(a.dims) == 1:  # [K] @ [K, N] -> [N]
        return _apply(a.dims, "matmul", b, g), _apply(b.dims, "outer", a, g)
    at = _apply(a.dims[::-1], "transpose", a)  # [M, K] @ [K, N] -> [M, N]
    bt = _apply(b.dims[::-1], "transpose", b)
    return _apply(a.dims, "matmul", g, bt), _apply(b.dims, "matmul", at, g)


def _structural_vjp(node: Apply, g: Expr) -> tuple[Expr, ...]:
    op, args = node.op, node.args
    if op == "matmul":
        return _d_matmul(g, *args)
    if op == "outer":
        u, v = args
        return _apply(u.dims, "matmul", g, v), _apply(v.dims, "matmul", u, g)
    if op == "dot":
        u, v = args
        return _apply(u.dims, "mul", g, v), _apply(v.dims, "mul", g, u)
    if op == "sum":
        return (broadcast_like(g, args[0]),)
    if op == "transpose":
        return (_apply(args[0].dims, "transpose", g),)
    raise NoDerivative(f"no derivative rule for '{op}'")


def _structural_jvp(node: Apply, tangents: list[Expr | None]) -> Expr:
    """The tangent of a bilinear or linear node: one term per operand with a tangent."""
    op, args = node.op, node.args
    terms = []
    for i, t in enumerate(tangents):
        if t is None:
            continue
        t = broadcast_like(t, args[i]) if t.dims != args[i].dims else t
        operands = list(args)
        operands[i] = t
        terms.append(_apply(node.dims, op, *operands))
    total: Expr | None = None
    for term in terms:
        total = _add(total, term)
    assert total is not None
    return total


# ---- forward mode ----


def jvp(
    expr: Expr, tangents: Mapping[str, Expr], lets: Mapping[str, Expr] | None = None
) -> Expr | None:
    """The tangent of `expr` when each name in `tangents` moves along its tangent.

    `lets`: let definitions to differentiate through (a let outside them, like
    any other name without a tangent, is held fixed). A tangent may have fewer
    dims than its name (a scalar 1 moves every element alike). Returns None
    where the tangent is exactly zero: nothing `expr` reads moves, so no term
    of the result multiplies anything by 0."""
    return _Forward(tangents, lets or {}).tangent(expr)


class _Forward:
    def __init__(self, tangents: Mapping[str, Expr], lets: Mapping[str, Expr]) -> None:
        self.tangents = dict(tangents)
        self.lets = lets
        self.memo: dict[Expr, Expr | None] = {}

    def tangent(self, expr: Expr) -> Expr | None:
        if isinstance(expr, Const):
            return None
        if isinstance(expr, Ref):
            if expr.name not in self.tangents and expr.name in self.lets:
                self.tangents[expr.name] = self.tangent(self.lets[expr.name])
            return self.tangents.get(expr.name)
        assert isinstance(expr, Apply)
        if expr in self.memo:
            return self.memo[expr]
        ts = [self.tangent(a) for a in expr.args]
        if all(t is None for t in ts):
            found = None
        elif expr.op in ELEMENTWISE:
            found = self._elementwise(expr, ts)
        elif expr.op in STRUCTURAL:
            found = _structural_jvp(expr, ts)
        else:  # the derivative rules' own ops: never differentiated again
            raise NoDerivative(f"no derivative rule for '{expr.op}'")
        found = None if found is None else _spanned(found, expr.span)
        self.memo[expr] = found
        return found

    def _elementwise(self, node: Apply, ts: list[Expr | None]) -> Expr | None:
        rule = OPS[node.op].vjp
        assert rule is not None, node.op
        total: Expr | None = None
        for i, t in enumerate(ts):
            if t is None:
                continue
            if not all(_nest(t.dims, a.dims) for a in node.args):
                # the rule's nodes take the dims of their largest operand, which needs
                # all of them to nest: broadcast (reading the node, but only its shape)
                t = broadcast_like(t, node)
            term = rule(t, node.args, node)[i]
            if term is not None:
                total = _add(total, term)
        return total


# ---- reverse mode ----


@dataclass(frozen=True)
class Cotangents:
    """What `vjp` found: a cotangent per name (lets differentiated through
    included, as the cotangent their definition received) and per node."""

    names: Mapping[str, Expr]
    nodes: Mapping[Expr, Expr]

    def of(self, name: str) -> Expr | None:
        return self.names.get(name)


def vjp(
    seeds: Iterable[tuple[Expr, Expr]],
    lets: Sequence[tuple[str, Expr]] | Mapping[str, Expr] = (),
    *,
    wrt: Callable[[str], bool] | None = None,
    varies: Callable[[str], bool] | None = None,
) -> Cotangents:
    """Cotangents of the names the `seeds` read, each seed (value, cotangent)
    pushed back through the value.

    lets: definitions to differentiate through; a let outside them is a leaf
      whose cotangent stays on its name.
    wrt: the names wanted (default: all); nodes that read none of them, directly
      or through `lets`, take no cotangent.
    varies: which names vary over the steps an evaluation covers (default:
      all). A contribution from a varying value to one that does not is summed
      over the steps (`sum_steps`), so a param's cotangent is its total.

    The nodes are processed once each, parents before children; a cotangent is
    the sum of its contributions in the order the parents were processed."""
    return _Reverse(dict(lets), wrt, varies).run(list(seeds))


class _Reverse:
    def __init__(
        self,
        lets: dict[str, Expr],
        wrt: Callable[[str], bool] | None,
        varies: Callable[[str], bool] | None,
    ) -> None:
        self.lets = lets
        self.wrt = wrt
        self.varies_name = varies
        self._depends: dict[object, bool] = {}
        self._varies: dict[object, bool] = {}
        self.cotangent: dict[object, Expr] = {}  # node, or ("name", n)

    # -- what a node reads --
    def depends(self, expr: Expr) -> bool:
        """Whether `expr` reads a wanted name (through the lets differentiated)."""
        if isinstance(expr, Const):
            return False
        if isinstance(expr, Ref):
            key: object = ("name", expr.name)
            if key not in self._depends:
                self._depends[key] = False  # a let reads only earlier names
                if expr.name in self.lets:
                    self._depends[key] = self.depends(self.lets[expr.name])
                else:
                    self._depends[key] = self.wrt is None or self.wrt(expr.name)
            return self._depends[key]
        if expr not in self._depends:
            self._depends[expr] = any(self.depends(a) for a in expr.args)
        return self._depends[expr]

    def varies(self, expr: Expr) -> bool:
        if self.varies_name is None:
            return True
        if isinstance(expr, Const):
            return False
        if isinstance(expr, Ref):
            key: object = ("name", expr.name)
            if key not in self._varies:
                if expr.name in self.lets:
                    self._varies[key] = self.varies(self.lets[expr.name])
                else:
                    self._varies[key] = self.varies_name(expr.name)
            return self._varies[key]
        if expr not in self._varies:  # a sum over the steps is the same at every step
            steps = isinstance(expr, Apply) and expr.op == "sum_steps"
            self._varies[expr] = not steps and any(self.varies(a) for a in expr.args)
        return self._varies[expr]

    # -- accumulation --
    def key(self, expr: Expr) -> object:
        return ("name", expr.name) if isinstance(expr, Ref) else expr

    def add(self, target: Expr, value: Expr, span: Span | None) -> None:
        """Add a contribution with the dims of the node it came through."""
        if not self.depends(target):
            return
        value = sum_to(value, target.dims, span)
        if self.varies(value) and not self.varies(target):
            value = _apply(value.dims, "sum_steps", value, span=span)
        key = self.key(target)
        self.cotangent[key] = _add(self.cotangent.get(key), value, span)

    # -- traversal --
    def order(self, roots: list[Expr]) -> list:
        """Nodes and ("let", name) markers, children before parents."""
        found: list = []
        seen: set = set()

        def visit(node: Expr) -> None:
            if not self.depends(node):
                return
            if isinstance(node, Ref):
                if node.name in self.lets and ("let", node.name) not in seen:
                    seen.add(("let", node.name))
                    visit(self.lets[node.name])
                    found.append(("let", node.name))
                return
            if node in seen:
                return
            seen.add(node)
            for arg in node.args:
                visit(arg)
            found.append(node)

        for root in roots:
            visit(root)
        return found

    def run(self, seeds: list[tuple[Expr, Expr]]) -> Cotangents:
        for value, ct in seeds:
            if ct.dims != value.dims and embed(ct.dims, value.dims) is not None:
                ct = broadcast_like(ct, value)  # a cotangent alike for every element
            self.add(value, ct, value.span)
        nodes: dict[Expr, Expr] = {}
        for item in reversed(self.order([value for value, _ in seeds])):
            if isinstance(item, tuple):  # a let: its cotangent goes to its definition
                ct = self.cotangent.get(("name", item[1]))
                if ct is not None:
                    definition = self.lets[item[1]]
                    self.add(definition, ct, definition.span)
                continue
            ct = self.cotangent.get(item)
            if ct is None:
                continue
            nodes[item] = ct
            self.rules(item, ct)
        names = {key[1]: ct for key, ct in self.cotangent.items() if isinstance(key, tuple)}
        return Cotangents(names, nodes)

    def rules(self, node: Apply, g: Expr) -> None:
        if node.op in ELEMENTWISE:
            rule = OPS[node.op].vjp
            assert rule is not None, node.op
            contributions = rule(g, node.args, node)
        else:
            contributions = _structural_vjp(node, g)
        # One node's contributions to the same operand (h - h, h * h) are summed
        # together before they meet any other: `(x + -x) + y` is y, `(y + x) + -x` is
        # not in floating point when |x| >> |y|.
        grouped: dict[Expr, Expr] = {}
        for arg, contribution in zip(node.args, contributions):
            if contribution is None or _constant(arg):
                continue  # a constant exponent; constants take no cotangent
            contribution = _spanned(contribution, node.span)
            grouped[arg] = (
                _add(grouped[arg], contribution, node.span) if arg in grouped else (contribution)
            )
        for arg, contribution in grouped.items():
            self.add(arg, contribution, node.span)


# ---- the Jacobian of the transition ----


class Structure(Enum):
    """How d(new target)/d(source) is shaped."""

    DIAGONAL = "diagonal"  # an elementwise multiplier: only elementwise ops carry the state
    DENSE = "dense"  # the state passes a contraction or a transpose: a matrix


@dataclass(frozen=True)
class JacobianBlock:
    target: str
    source: str
    structure: Structure
    # DIAGONAL: the multiplier (dims nest in the target's), d new_i / d old_i.
    # DENSE: the tangent of the target for a tangent named `tangent` of the
    # source (a Jacobian-vector product, matrix-free).
    value: Expr
    tangent: str | None = None


def state_jacobian(
    updates: Sequence[tuple[str, Expr]],
    states: Mapping[str, Dims],
    lets: Mapping[str, Expr] | None = None,
) -> tuple[JacobianBlock, ...]:
    """d(update of each target)/d(each state it reads), with its structure.

    A block is DIAGONAL when the source reaches the target through elementwise
    ops only (its tangent is then the multiplier times the source's tangent,
    elementwise); its value is the multiplier, the tangent of the target for
    the tangent 1. Otherwise it is DENSE and carries the tangent for a
    symbolic tangent of the source. Blocks that are exactly zero are absent."""
    lets = lets or {}
    blocks: list[JacobianBlock] = []
    for target, update in updates:
        for source, dims in states.items():
            name = f"tangent of {source}"
            symbolic = jvp(update, {source: Ref(dims, name, TANGENT)}, lets)
            if symbolic is None:
                continue
            if states.get(target) == dims and _elementwise_in(symbolic, name):
                value = jvp(update, {source: Const((), 1.0)}, lets)
                assert value is not None
                blocks.append(JacobianBlock(target, source, Structure.DIAGONAL, value))
            else:
                blocks.append(JacobianBlock(target, source, Structure.DENSE, symbolic, name))
    return tuple(blocks)


def _elementwise_in(expr: Expr, name: str) -> bool:
    """Whether every path from `expr` to the name `name` passes elementwise ops only
    (and a `broadcast_like` of a scalar, which moves every element alike)."""
    for node in walk(expr):
        if not isinstance(node, Apply) or node.op in ELEMENTWISE:
            continue
        if node.op in INTERNAL and (node.op != "broadcast_like" or not node.args[0].dims):
            continue  # elementwise too (a scalar broadcast moves every element alike)
        if any(isinstance(n, Ref) and n.name == name for a in node.args for n in walk(a)):
            return False
    return True
