"""Diagonal-plus-low-rank form of a matrix-state update, read off the IR.

Stage: analysis. Abstract evaluation of the update over values that are
affine in the state S[R, C] with a right factor:

  MatAff:  S * d + sum_r outer(S @ u_r, w_r) + off      (a matrix [R, C])
  VecAff:  S @ p + off                                  (a vector [R])

Scaling by a scalar or a [C] vector, sums, `S @ u`, and `outer(S @ u, w)`
stay in the domain; anything else (left multiplication, a dense right factor,
a nonlinearity of S) raises NotCanonical and the classifier stays general.
"""

from __future__ import annotations

from dataclasses import dataclass

from recc.analysis.forms import DplrForm, LowRankTerm
from recc.analysis.rewrite import (
    AbstractOps,
    NotCanonical,
    abstract_updates,
    const,
    make,
    state_dependent_lets,
)
from recc.ir.evaluate import evaluate
from recc.ir.nodes import INPUT, LET, PARAM, Apply, Const, Expr, Recurrence, Ref, walk


@dataclass(frozen=True)
class MatAff:
    decay: Expr | None
    terms: tuple[tuple[Expr, Expr], ...]
    off: Expr | None


@dataclass(frozen=True)
class VecAff:
    p: Expr | None
    off: Expr | None


def _opt(op: str, a: Expr | None, b: Expr | None) -> Expr | None:
    """make(op, a, b) with None meaning zero (for add/sub)."""
    if a is None and b is None:
        return None
    if a is None:
        return b if op == "add" else make("neg", b)
    if b is None:
        return a
    return make(op, a, b)


def _scale(x: Expr | None, c: Expr, op: str) -> Expr | None:
    return None if x is None else make(op, x, c)


class DplrOps(AbstractOps):
    def __init__(self, rows: str, cols: str) -> None:
        self.rows, self.cols = rows, cols

    def apply_abstract(self, node: Apply, args: list) -> object:
        op = node.op
        a = args[0]
        b = args[1] if len(args) > 1 else None
        if op in ("add", "sub"):
            return self.add(a, b, op)
        if op == "neg":
            return self.scale(a, const(-1.0), "mul")
        if op == "mul":
            if self.is_free(a):
                return self.scale(b, a, "mul")
            if self.is_free(b):
                return self.scale(a, b, "mul")
            raise NotCanonical("product of two state-dependent factors")
        if op == "div" and self.is_free(b):
            return self.scale(a, b, "div")
        if op == "matmul" and isinstance(a, MatAff) and self.is_free(b):
            if b.dims != (self.cols,):
                raise NotCanonical("S @ M with a matrix M is a dense right factor, not low rank")
            p = None if a.decay is None else make("mul", a.decay, b)
            for u, w in a.terms:
                p = _opt("add", p, make("mul", u, make("dot", w, b)))
            off = None if a.off is None else make("matmul", a.off, b)
            return VecAff(p, off)
        if op == "outer" and isinstance(a, VecAff) and self.is_free(b):
            if b.dims != (self.cols,):
                raise NotCanonical("outer(S @ u, w) needs w over the columns of S")
            terms = () if a.p is None else ((a.p, b),)
            off = None if a.off is None else make("outer", a.off, b)
            return MatAff(None, terms, off)
        raise NotCanonical(f"'{op}' of the state is not a diagonal-plus-low-rank update")

    def add(self, a, b, op: str):
        if self.is_free(b) and isinstance(a, (MatAff, VecAff)):
            return _replace_off(a, _opt(op, a.off, b))
        if self.is_free(a) and isinstance(b, (MatAff, VecAff)):
            if op == "sub":
                b = self.scale(b, const(-1.0), "mul")
            return _replace_off(b, _opt("add", a, b.off))
        if isinstance(a, MatAff) and isinstance(b, MatAff):
            if op == "sub":
                b = self.scale(b, const(-1.0), "mul")
            return MatAff(
                _opt("add", a.decay, b.decay), a.terms + b.terms, _opt("add", a.off, b.off)
            )
        if isinstance(a, VecAff) and isinstance(b, VecAff):
            return VecAff(_opt(op, a.p, b.p), _opt(op, a.off, b.off))
        raise NotCanonical("sum of a matrix and a vector")

    def scale(self, x, c: Expr, op: str):
        if isinstance(x, MatAff):
            if c.dims not in ((), (self.cols,)):
                raise NotCanonical("scaling the rows of S is a left factor, not a right one")
            return MatAff(
                _scale(x.decay, c, op),
                tuple((u, make(op, w, c)) for u, w in x.terms),
                _scale(x.off, c, op),
            )
        if isinstance(x, VecAff):
            if c.dims != ():
                raise NotCanonical("scaling S @ u elementwise is a left factor")
            return VecAff(_scale(x.p, c, op), _scale(x.off, c, op))
        raise NotCanonical("unexpected value")


def _replace_off(x, off):
    return MatAff(x.decay, x.terms, off) if isinstance(x, MatAff) else VecAff(x.p, off)


def dplr_form(rec: Recurrence, state: str) -> DplrForm:
    """S' = S * d + sum_r outer(S @ u_r, w_r) + B for the matrix state `state`."""
    s = rec.state(state)
    if len(s.dims) != 2:
        raise NotCanonical("not a matrix state")
    ops = DplrOps(rows=s.dims[0], cols=s.dims[1])
    seed = MatAff(const(1.0), (), None)
    value = abstract_updates(rec, ops, {state: seed})[state]
    if not isinstance(value, MatAff):  # e.g. the update ignores the state
        raise NotCanonical("the update is not a matrix affine in the state")
    terms = tuple(LowRankTerm(u, w) for u, w in value.terms if not (_is_zero(u) or _is_zero(w)))
    decay = None if value.decay is None or _is_zero(value.decay) else value.decay
    return DplrForm(state=state, decay=decay, terms=terms, inject=value.off)


def _is_zero(expr: Expr) -> bool:
    return isinstance(expr, Const) and expr.value == 0.0


# ---- the chunkwise lowering's reading of the form ----------------------------


def outer_terms(
    expr: Expr | None, rows: str, cols: str, lets: dict[str, Expr]
) -> tuple[tuple[Expr, Expr], ...]:
    """A state-free matrix [rows, cols] as a sum of outer products: ((a_j, b_j), ...)
    with `expr = sum_j outer(a_j, b_j)`, a_j over `rows`, b_j over `cols`.

    Reads outer(a, b), sums and differences, negation, scaling by a scalar or by a
    vector over either dim (a row scale goes into a_j, a column scale into b_j),
    division by such a factor, a transpose, and the lets in `lets` (by name) that
    hold such matrices. A matrix-vector product inside a factor, `outer(M @ k, w)`
    with M itself a sum of outer products, is written `sum_j a_j * dot(b_j, k)`,
    so no [rows, cols] matrix is formed per step. Anything else (a dense matrix
    input or param, an elementwise function of a matrix) raises NotCanonical."""
    if expr is None:
        return ()
    dims = (rows, cols)

    def terms(e: Expr, r: str, c: str) -> list[tuple[Expr, Expr]]:
        if e.dims != (r, c):
            raise NotCanonical(f"a term of dims {list(e.dims)} in a matrix of dims [{r}, {c}]")
        if isinstance(e, Const):
            if e.value == 0.0:
                return []
            raise NotCanonical("a constant matrix is not a sum of outer products")
        if isinstance(e, Ref):
            if e.name in lets:
                return terms(lets[e.name], r, c)
            raise NotCanonical(f"'{e.name}' is a dense matrix, not a sum of outer products")
        assert isinstance(e, Apply)
        op, args = e.op, e.args
        if op == "outer":
            return [(factor(args[0], lets), factor(args[1], lets))]
        if op in ("add", "sub"):
            left, right = terms(args[0], r, c), terms(args[1], r, c)
            if op == "sub":
                right = [(make("neg", a), b) for a, b in right]
            return left + right
        if op == "neg":
            return [(make("neg", a), b) for a, b in terms(args[0], r, c)]
        if op == "transpose":
            return [(b, a) for a, b in terms(args[0], c, r)]
        if op in ("mul", "div"):
            matrix, scale = args
            if op == "mul" and matrix.dims != (r, c):
                matrix, scale = scale, matrix
            if scale.dims in ((), (r,)):
                return [(make(op, a, factor(scale, lets)), b) for a, b in terms(matrix, r, c)]
            if scale.dims == (c,):
                return [(a, make(op, b, factor(scale, lets))) for a, b in terms(matrix, r, c)]
            raise NotCanonical("an elementwise product of two matrices is not low rank")
        raise NotCanonical(f"'{op}' of a matrix is not a sum of outer products")

    return tuple(terms(expr, *dims))


def factor(expr: Expr, lets: dict[str, Expr]) -> Expr:
    """A vector (or scalar) with each `M @ v`, M a sum of outer products, written
    `sum_j a_j * dot(b_j, v)` (M^T @ v likewise), so that no matrix is formed."""
    if not isinstance(expr, Apply):
        return expr
    if expr.op == "matmul" and len(expr.args[0].dims) == 2 and len(expr.args[1].dims) == 1:
        m, v = expr.args
        try:
            parts = outer_terms(m, *m.dims, lets)
        except NotCanonical:
            parts = None
        if parts is not None:
            v = factor(v, lets)
            total = None
            for a, b in parts:
                total = _opt("add", total, make("mul", a, make("dot", b, v)))
            return total if total is not None else Const(expr.dims, 0.0)
    args = tuple(factor(a, lets) for a in expr.args)
    return expr if args == expr.args else make(expr.op, *args, like=expr.dims)


def linear_readout(rec: Recurrence, state: str, expr: Expr) -> tuple[Expr | None, Expr | None]:
    """An output as `S @ probe + rest` (probe over S's columns; either None if absent),
    S the new state. NotCanonical if it reads S otherwise (S.T @ q, a function of S,
    S itself, a let of the old state)."""
    s = rec.state(state)
    rows, cols = s.dims
    old = state_dependent_lets(rec, {state})
    read = {n.name for n in walk(expr) if isinstance(n, Ref)} & old
    if read:
        raise NotCanonical(f"it reads the old state through let '{sorted(read)[0]}'")
    ops = DplrOps(rows, cols)
    env: dict = {d.name: Ref(d.dims, d.name, INPUT) for d in rec.inputs}
    env.update({d.name: Ref(d.dims, d.name, PARAM) for d in rec.value_params()})
    env.update({d.name: Ref(d.expr.dims, d.name, LET) for d in rec.lets})
    env[state] = MatAff(const(1.0), (), None)
    value = evaluate(expr, env, ops)
    if isinstance(value, Expr):
        return None, value
    if isinstance(value, VecAff):
        return value.p, value.off
    raise NotCanonical("it is the matrix state itself, which would be materialised every step")


def direction_of(vector: Expr) -> tuple[Expr, Expr | None]:
    """`vector` (over one dim) as `scale * direction`: the product of its scalar factors
    (None if there are none) and the product of its vector factors, read through
    products, negation and division by a scalar. Two writes whose directions are the
    same expression share one rank-1 term (Gated DeltaNet's beta * v * k^T and
    -beta * alpha * (S @ k) * k^T are one write along k), which halves the work."""
    scalars: list[Expr] = []
    vectors: list[Expr] = []
    negations = 0

    def split(e: Expr, inverted: bool) -> None:
        nonlocal negations
        if isinstance(e, Apply) and e.op == "mul":
            split(e.args[0], inverted)
            split(e.args[1], inverted)
        elif isinstance(e, Apply) and e.op == "neg":
            negations += 1
            split(e.args[0], inverted)
        elif isinstance(e, Apply) and e.op == "div" and e.args[1].dims == ():
            split(e.args[0], inverted)
            split(e.args[1], not inverted)
        elif e.dims == ():
            scalars.append(make("div", const(1.0), e) if inverted else e)
        elif inverted:  # dividing by a vector: keep it whole
            vectors.append(make("div", const(1.0), e))
        else:
            vectors.append(e)

    split(vector, False)
    vectors.sort(key=repr)
    direction = vectors[0]
    for v in vectors[1:]:
        direction = make("mul", direction, v)
    scale = None
    for s in scalars:
        scale = s if scale is None else make("mul", scale, s)
    if negations % 2:
        scale = make("neg", scale) if scale is not None else const(-1.0)
    return direction, scale
