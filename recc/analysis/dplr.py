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
from recc.analysis.rewrite import AbstractOps, NotCanonical, abstract_updates, const, make
from recc.ir.nodes import Apply, Const, Expr, Recurrence


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
