"""Exact rewrites of a recurrence before it is classified.

Stage: analysis. `normalise(rec)` returns a recurrence that computes the same
values as `rec` (and, for MinMax classes, routes the same ties) but spells
some updates in a form the classifier and the form readers know. It only
feeds the analysis: the interpreter, and every backend for a nonlinear
update, run the spec as written.

Every rule is exact for every value, infinities, NaN and signed zeros included:

  transpose   pushed down to the leaves that read a state: (X.T).T = X,
              f(X, c).T = f(X.T, c) for an elementwise f (a vector or
              scalar operand broadcasts by name, unchanged), outer(u, v).T =
              outer(v, u), (X @ Y).T = Y.T @ X.T; a let that is a transpose
              is looked through. Only the layout changes: every element is
              computed from the same operands by the same operation.
  -max(x, y)  = min(-x, -y), and -min(x, y) = max(-x, -y), operands in order
              (negation is exact, so ties and NaN pick the same operand);
              -(-x) = x.

Identities of the reals that are not used (docs/analysis.md says why):
(x + h) - h is not x in floating point (0 for x = 1, h = 1e17); x + (h - h)
is x for finite h, but the interpreter's gradient through it is not that of
x (autograd accumulates +c and -c into the state's cotangent, and at h = 1e17
sigmoid(k + (h - h)) * h has d/dh = 0, not 0.5); log(exp(h)) is not h (inf
from h > 709.78, subnormal and then -inf below -708); and max(h + a, h + b)
= h + max(a, b) in value, but as a diagonal form its gradient would route by
a >= b where the spec routes by fl(h + a) >= fl(h + b) (a MinMax class takes
its gradients from the spec as written, so it reads as max-plus).
"""

from __future__ import annotations

from dataclasses import replace

from recc.ir.nodes import LET, STATE, Apply, Const, Definition, Expr, Recurrence, Ref
from recc.ir.ops import ELEMENTWISE


class _Normaliser:
    def __init__(self) -> None:
        self.lets: dict[str, Expr] = {}  # name -> normalised expression
        self.memo: dict[int, bool] = {}  # id -> whether it reads a state
        self.keep: list[Expr] = []  # the nodes `memo` holds ids of

    def reads(self, expr: Expr) -> bool:
        """Whether `expr` (normalised) reads a state, directly or through lets."""
        if isinstance(expr, Const):
            return False
        if isinstance(expr, Ref):
            if expr.role == LET and expr.name in self.lets:
                return self.reads(self.lets[expr.name])
            return expr.role == STATE
        found = self.memo.get(id(expr))
        if found is None:
            assert isinstance(expr, Apply)
            found = any(self.reads(a) for a in expr.args)
            self.memo[id(expr)] = found
            self.keep.append(expr)
        return found

    def norm(self, expr: Expr) -> Expr:
        """`expr` rewritten bottom-up; unchanged nodes are kept (with their spans)."""
        if not isinstance(expr, Apply):
            return expr
        args = tuple(self.norm(a) for a in expr.args)
        if any(a is not b for a, b in zip(args, expr.args)):
            expr = replace(expr, args=args)
        if expr.op == "transpose":
            return self.transposed(expr.args[0], expr)
        if expr.op == "neg":
            return self.negated(expr.args[0], expr)
        return expr

    def transposed(self, x: Expr, like: Apply | None = None) -> Expr:
        """An expression equal to x.T, with the transposes of state-dependent values
        pushed to the leaves."""

        def keep() -> Expr:
            if like is not None:
                return like
            return Apply(x.dims[::-1], "transpose", (x,), span=x.span)

        if not self.reads(x):
            return keep()
        if isinstance(x, Ref) and x.role == LET and x.name in self.lets:
            value = self.lets[x.name]
            if isinstance(value, Apply) and value.op == "transpose":
                return value.args[0]
            return keep()
        if not isinstance(x, Apply):
            return keep()
        if x.op == "transpose":
            return x.args[0]
        if x.op in ELEMENTWISE and len(x.dims) == 2:
            args = tuple(self.transposed(a) if len(a.dims) == 2 else a for a in x.args)
            return Apply(x.dims[::-1], x.op, args, span=x.span)
        if x.op == "outer" and all(len(a.dims) == 1 for a in x.args):
            u, v = x.args
            return Apply(x.dims[::-1], "outer", (v, u), span=x.span)
        if x.op == "matmul" and all(len(a.dims) == 2 for a in x.args):
            a, b = x.args
            return Apply(x.dims[::-1], "matmul", (self.transposed(b), self.transposed(a)))
        return keep()

    def negated(self, x: Expr, like: Apply | None = None) -> Expr:
        """An expression equal to -x: -(-y) = y, and -max(y, z) = min(-y, -z) where
        the max reads a state."""
        if isinstance(x, Apply) and x.op == "neg":
            return x.args[0]
        if isinstance(x, Apply) and x.op in ("max", "min") and self.reads(x):
            swapped = "min" if x.op == "max" else "max"
            return Apply(x.dims, swapped, tuple(self.negated(a) for a in x.args), span=x.span)
        if like is not None:
            return like
        if isinstance(x, Const):
            return Const((), -x.value, span=x.span)
        return Apply(x.dims, "neg", (x,), span=x.span)

    def definition(self, d: Definition) -> Definition:
        expr = self.norm(d.expr)
        return d if expr is d.expr else replace(d, expr=expr)


def normalise(rec: Recurrence, outputs: bool = False) -> Recurrence:
    """`rec` with the exact rewrites above applied to its lets and updates, and to its
    outputs if `outputs` (the classifier leaves them alone: they do not decide the
    class); `rec` itself if none applies."""
    n = _Normaliser()
    lets = []
    for let in rec.lets:
        new = n.definition(let)
        n.lets[let.name] = new.expr
        lets.append(new)
    updates = tuple(n.definition(u) for u in rec.updates)
    read = tuple(n.definition(o) for o in rec.outputs) if outputs else rec.outputs
    unchanged = zip((*lets, *updates, *read), (*rec.lets, *rec.updates, *rec.outputs))
    if all(a is b for a, b in unchanged):
        return rec
    return replace(rec, lets=tuple(lets), updates=updates, outputs=read)
