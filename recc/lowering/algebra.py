"""The step-map algebra of each scan, as data: written once, as recc IR.

Stage: lowering. A scan composes one map per step. Each class's maps have
named slots; an `Algebra` holds, as IR expressions over those slots:

  combine   the slots of "first, then second" (operands `a1_00` of the first
            map, `a2_00` of the second: the names the Triton combines take)
  apply     the new state's components `x_i` from a map and the old state
  identity  the slots of the identity map (what padded steps are given)

for the affine maps of a diagonal block (h -> A h + b, k x k), the dense maps
of a whole state (h -> A h + b with A one [N, N] slot: Newton's linearised
step), the pair maps the diagonal backward's reverse scan composes
(u -> (R u + r, S u + s)), the MinMax semirings (max-min, max-plus, min-plus)
and the routings the MinMax backward's reverse scan composes (a pair map whose
R, S are 0 or 1). The torch backend runs them (`compiled`: a function of
tensors), the Triton backend prints them (`backends/triton/scan_codegen.py`),
and tests/test_algebra.py checks that each is associative with its identity.

A slot may be **absent** (the spec has no such coefficient, or no product
reaches it): it is then not a value but the structural element it stands
for, and `specialize` removes it by the rules of that element (an absent
`a_ij` is a zero: it drops out of sums and makes products absent; an absent
max-plus bound `b` is -inf: it drops out of `max` and makes `b + a` absent).
No absent slot is ever materialised, so `0 * inf` and `0 * NaN` never arise
from a coefficient the spec does not have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from recc.ir.evaluate import evaluate
from recc.ir.nodes import Apply, Const, Expr, Ref, walk
from recc.ir.ops import OPS

SLOT = "slot"  # the role of a slot's (or a state component's) reference

# The structural elements an absent slot stands for.
ZERO, POS_INF, NEG_INF = "zero", "+inf", "-inf"
# The identity map's value of a matrix slot: the identity matrix over its dims.
EYE = "eye"


def _ref(name: str) -> Ref:
    return Ref((), name, SLOT)


def _op(op: str, *args: Expr) -> Apply:
    return Apply((), op, args)


def _sum(terms: Iterable[Expr]) -> Expr | None:
    terms = list(terms)
    return reduce(lambda total, t: _op("add", total, t), terms) if terms else None


def operand(slot: str, which: int) -> str:
    """`a_00` of the first map is `a1_00`; `a` of the second is `a2`."""
    letter, _, index = slot.partition("_")
    return f"{letter}{which}" + (f"_{index}" if index else "")


@dataclass(frozen=True)
class Algebra:
    name: str  # "affine", "pair", "max-min", "max-plus", "min-plus"
    slots: tuple[str, ...]
    # slot -> what it is when absent (no entries: every map has every slot)
    absent: dict[str, str] = field(compare=False)
    # slot -> the identity map's value: a number, or EYE for a matrix slot (no
    # entries: there is no identity map, as for `shift`)
    identity: dict[str, float | str] = field(compare=False)
    combine: dict[str, Expr] = field(compare=False)  # slot -> IR over operand(slot, 1|2)
    components: tuple[str, ...] = ()  # the state's components x_i, for `apply`
    apply: dict[str, Expr] = field(default_factory=dict, compare=False)  # x_i -> IR
    # the dims of a slot or component that is a tensor per map (dense); others are ()
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    # torch functions built so far, by slot pattern (see `combine_for`, `apply_for`)
    functions: dict = field(default_factory=dict, compare=False, repr=False)

    def combine_for(self, first: tuple[str, ...], second: tuple[str, ...]):
        """`f(m1, m2)` for maps with these slots (built once per pattern)."""
        key = ("combine", first, second)
        if key not in self.functions:
            self.functions[key] = combine_function(self, frozenset(first), frozenset(second))
        return self.functions[key]

    def apply_for(self, present: tuple[str, ...]):
        """`f(m, x)` for a map with these slots (built once per pattern)."""
        key = ("apply", present)
        if key not in self.functions:
            self.functions[key] = apply_function(self, frozenset(present))
        return self.functions[key]

    def specialize_combine(
        self, present_first: frozenset[str], present_second: frozenset[str]
    ) -> dict[str, Expr]:
        """The combine for maps with only these slots present; a slot of the result
        that comes out absent is left out."""
        absent = {
            operand(s, w): self.absent[s]
            for w, present in ((1, present_first), (2, present_second))
            for s in self.slots
            if s not in present
        }
        return specialize(self.combine, absent)

    def specialize_apply(self, present: frozenset[str]) -> dict[str, Expr]:
        absent = {s: self.absent[s] for s in self.slots if s not in present}
        return specialize(self.apply, absent)

    def present_after(self, first: frozenset[str], second: frozenset[str]) -> frozenset[str]:
        """The slots a composed map has, from those of the two it composes."""
        return frozenset(self.specialize_combine(first, second))


# ---- the algebras -------------------------------------------------------------


_MADE: dict[tuple, Algebra] = {}  # each algebra built once, so its `functions` persist


def _once(key: tuple, make: Callable[[], Algebra]) -> Algebra:
    if key not in _MADE:
        _MADE[key] = make()
    return _MADE[key]


def affine(k: int) -> Algebra:
    """h -> A h + b on k coupled components: (A2 A1, A2 b1 + b2)."""
    return _once(("affine", k), lambda: _affine(k))


def pair(k: int) -> Algebra:
    """u -> (R u + r, S u + s), composed (see `_pair`)."""
    return _once(("pair", k), lambda: _pair(k))


def minmax(semiring: str) -> Algebra:
    """max(min(h, a), b), max(h + a, b) or min(h + a, b) (see `_minmax`)."""
    return _once(("minmax", semiring), lambda: _minmax(semiring))


def dense() -> Algebra:
    """h -> A h + b with A a whole n x n matrix: (A2 A1, A2 b1 + b2) (see `_dense`)."""
    return _once(("dense",), _dense)


def shift() -> Algebra:
    """The last two values of a run of steps, composed by selection (see `_shift`)."""
    return _once(("shift",), _shift)


def routing() -> Algebra:
    """u -> (R u + r, S u + s) for 0/1 routings R, S, composed by selection (see
    `_routing`)."""
    return _once(("routing",), _routing)


def _affine(k: int) -> Algebra:
    a = [f"a_{i}{j}" for i in range(k) for j in range(k)]
    b = [f"b_{i}" for i in range(k)]

    def A(w: int, i: int, j: int) -> Ref:
        return _ref(operand(f"a_{i}{j}", w))

    def B(w: int, i: int) -> Ref:
        return _ref(operand(f"b_{i}", w))

    combine: dict[str, Expr] = {}
    for i in range(k):
        for j in range(k):
            combine[f"a_{i}{j}"] = _sum(_op("mul", A(2, i, m), A(1, m, j)) for m in range(k))
    for i in range(k):
        combine[f"b_{i}"] = _sum([_op("mul", A(2, i, m), B(1, m)) for m in range(k)] + [B(2, i)])
    xs = tuple(f"x_{i}" for i in range(k))
    apply = {
        xs[i]: _sum(
            [_ref(f"b_{i}")] + [_op("mul", _ref(f"a_{i}{j}"), _ref(xs[j])) for j in range(k)]
        )
        for i in range(k)
    }
    identity = {s: float(s[2] == s[3]) for s in a} | {s: 0.0 for s in b}
    return Algebra("affine", (*a, *b), {s: ZERO for s in (*a, *b)}, identity, combine, xs, apply)


def _pair(k: int) -> Algebra:
    """u -> (R u + r, S u + s), composed: (R2 S1, S2 S1, R2 s1 + r2, S2 s1 + s2).

    The diagonal backward's reverse scan: g_t = R u + r and u_t = S u + s of
    the adjoint u entering from after the step. The composed map's g is the
    second's, so the identity (R = S = 1, r = s = 0) is a left identity only:
    the maps a padded step is given, which the reverse scan applies first."""
    mats = {L: [f"{L}_{i}{j}" for i in range(k) for j in range(k)] for L in ("r", "s")}
    vecs = {L: [f"{L}_{i}" for i in range(k)] for L in ("rv", "sv")}

    def M(L: str, w: int, i: int, j: int) -> Ref:
        return _ref(operand(f"{L}_{i}{j}", w))

    def V(L: str, w: int, i: int) -> Ref:
        return _ref(operand(f"{L}_{i}", w))

    combine: dict[str, Expr] = {}
    for L in ("r", "s"):
        for i in range(k):
            for j in range(k):
                combine[f"{L}_{i}{j}"] = _sum(
                    _op("mul", M(L, 2, i, m), M("s", 1, m, j)) for m in range(k)
                )
    for L, M2 in (("rv", "r"), ("sv", "s")):
        for i in range(k):
            combine[f"{L}_{i}"] = _sum(
                [_op("mul", M(M2, 2, i, m), V("sv", 1, m)) for m in range(k)] + [V(L, 2, i)]
            )
    slots = (*mats["r"], *mats["s"], *vecs["rv"], *vecs["sv"])
    identity = {s: float(s[-2] == s[-1]) for s in (*mats["r"], *mats["s"])}
    identity |= {s: 0.0 for s in (*vecs["rv"], *vecs["sv"])}
    # applied to the adjoint u entering from after the step: the step's cotangents
    # g_i = sum_j R_ij u_j + r_i and the adjoint it hands on, u_i = sum_j S_ij u_j + s_i
    us = tuple(f"u_{i}" for i in range(k))
    apply: dict[str, Expr] = {}
    for out, (L, v) in (("g", ("r", "rv")), ("u", ("s", "sv"))):
        for i in range(k):
            products = [_op("mul", _ref(f"{L}_{i}{j}"), _ref(us[j])) for j in range(k)]
            apply[f"{out}_{i}"] = _sum(products + [_ref(f"{v}_{i}")])
    absent = {s: ZERO for s in slots}
    return Algebra("pair", slots, absent, identity, combine, us, apply)


def _minmax(semiring: str) -> Algebra:
    """max(min(h, a), b) ("max-min"), max(h + a, b) ("max-plus"), min(h + a, b)
    ("min-plus"), composed in closed form."""
    a1, b1, a2, b2 = (_ref(n) for n in ("a1", "b1", "a2", "b2"))
    x = _ref("x_0")
    if semiring == "max-min":
        combine = {"a": _op("min", a1, a2), "b": _op("max", _op("min", a2, b1), b2)}
        apply = _op("max", _op("min", x, _ref("a")), _ref("b"))
        absent = {"a": POS_INF, "b": NEG_INF}
    else:
        join = "min" if semiring == "min-plus" else "max"
        combine = {"a": _op("add", a1, a2), "b": _op(join, _op("add", b1, a2), b2)}
        apply = _op(join, _op("add", x, _ref("a")), _ref("b"))
        absent = {"a": ZERO, "b": POS_INF if semiring == "min-plus" else NEG_INF}
    identity = {"a": _VALUE[absent["a"]], "b": _VALUE[absent["b"]]}
    return Algebra(semiring, ("a", "b"), absent, identity, combine, ("x_0",), {"x_0": apply})


def _dense() -> Algebra:
    """The affine maps of a state h[N] whose step couples every element with every
    other (Newton's linearised step with a dense Jacobian: h_t = J_t h_{t-1} + r_t).

    Unlike `affine(k)`, whose k x k coefficients are slots of their own (k is a
    spec's handful of coupled states), A is one slot holding the matrix, `A[N, N]`
    (rows the new state, columns the old), and b one slot `b[N]`: their size is a
    dim's, known at the call. An absent A is the zero matrix (the step reads no
    state), an absent b the zero vector."""
    n = ("N",)

    def ref(name: str, dims: tuple[str, ...]) -> Ref:
        return Ref(dims, name, SLOT)

    def matmul(a: Ref | Apply, b: Ref | Apply) -> Apply:
        return Apply(a.dims[:-1] + b.dims[1:], "matmul", (a, b))

    A1, A2 = ref("A1", n + n), ref("A2", n + n)
    b1, b2 = ref("b1", n), ref("b2", n)
    combine = {"A": matmul(A2, A1), "b": Apply(n, "add", (matmul(A2, b1), b2))}
    x = ref("x", n)
    apply = {"x": Apply(n, "add", (matmul(ref("A", n + n), x), ref("b", n)))}
    dims = {"A": n + n, "b": n, "x": n}
    absent = {"A": ZERO, "b": ZERO}
    return Algebra("dense", ("A", "b"), absent, {"A": EYE, "b": 0.0}, combine, ("x",), apply, dims)


def _shift() -> Algebra:
    """h_{t-1} at every step of a block, exactly: a scan that only selects values.

    A run of n >= 1 steps is (v, p, n): its last value v, the one before it p
    (read only when n > 1) and its length. "First, then second" is
    (v2, p2 if n2 > 1 else v1, n1 + n2): associative for runs of n >= 1. There
    is no identity map (an empty run has no last value; its p would have to be
    a sentinel), and none is needed: every step is a run of one (v = h_t, n = 1)
    and padded steps are masked where they are read. Applied to the value
    entering the run, x, it gives the value after it (x: v) and the one before
    its last step (old: p if n > 1 else x), h_{t-1}."""
    v1, p1, n1, v2, p2, n2 = (_ref(operand(s, w)) for w in (1, 2) for s in ("v", "p", "n"))
    one = Const((), 1.0)
    combine = {
        "v": v2,
        "p": _op("select", _op("gt", n2, one), p2, v1),
        "n": _op("add", n1, n2),
    }
    apply = {
        "x": _ref("v"),
        "old": _op("select", _op("gt", _ref("n"), one), _ref("p"), _ref("x")),
    }
    return Algebra("shift", ("v", "p", "n"), {}, {}, combine, ("x",), apply)


def _routing() -> Algebra:
    """The MinMax backward's reverse scan: a pair map (`_pair`, k = 1) whose R and S
    are routings, 0 or 1: (R2 S1, S2 S1, [R2] s1 + r2, [S2] s1 + s2), where [R2] s1
    selects s1 where R2 is 1 rather than multiplying, so a NaN or inf cotangent
    the state does not flow through stays where it is. Associative for routings
    (products and selections of 0 and 1); the identity (R = S = 1, r = s = 0) is a
    left identity only, as the pair's."""
    r1, s1, rv1, sv1, r2, s2, rv2, sv2 = (
        _ref(operand(slot, w)) for w in (1, 2) for slot in ("r", "s", "rv", "sv")
    )
    zero = Const((), 0.0)

    def routed(by: Expr, value: Expr) -> Expr:
        return _op("select", _op("gt", by, zero), value, zero)

    combine = {
        "r": _op("mul", r2, s1),
        "s": _op("mul", s2, s1),
        "rv": _op("add", routed(r2, sv1), rv2),
        "sv": _op("add", routed(s2, sv1), sv2),
    }
    slots = ("r", "s", "rv", "sv")
    identity = {"r": 1.0, "s": 1.0, "rv": 0.0, "sv": 0.0}
    # applied to the adjoint u entering from after the step: the step's cotangent g
    # and the adjoint it hands on, u' (the component, so maps chain through it)
    u = _ref("u")
    apply = {
        "g": _op("add", routed(_ref("r"), u), _ref("rv")),
        "u": _op("add", routed(_ref("s"), u), _ref("sv")),
    }
    absent = {slot: ZERO for slot in slots}
    return Algebra("routing", slots, absent, identity, combine, ("u",), apply)


_VALUE = {ZERO: 0.0, POS_INF: math.inf, NEG_INF: -math.inf}
# A comparison with an absent slot that is false for every value (0 > 0).
FALSE = "false"


# ---- absent slots: the structural elements, removed by their rules ------------


class _Structural:
    """An evaluator over IR where a value may also be an absent slot's element
    (ZERO, POS_INF, NEG_INF), which the rules below remove. An element stands
    for a term the spec does not have, so no rule looks at the other operand's
    value (an absent bound drops out of a max even against NaN)."""

    def const(self, node: Const) -> Any:
        return node

    def apply(self, node: Apply, args: list[Any]) -> Any:
        op = node.op
        marks = [a for a in args if isinstance(a, str)]
        if not marks:
            return Apply(node.dims, op, tuple(args))
        if op == "select":  # a routing's selection (see `_routing`)
            cond, picked, other = args
            if cond == FALSE:  # never selected: the other operand (a 0 is the zero)
                return ZERO if _is_zero(other) else other
            if picked == ZERO and (other == ZERO or _is_zero(other)):
                return ZERO
            raise ValueError("no structural rule for this selection")  # pragma: no cover
        a, b = args
        if op == "gt" and a == ZERO and _is_zero(b):
            return FALSE  # 0 > 0
        if op == "add":
            for m in (NEG_INF, POS_INF):
                if m in marks:  # -inf + x = -inf (and +inf + x = +inf)
                    return m
            return b if a == ZERO else a  # 0 + x = x
        if op in ("mul", "matmul"):
            return ZERO  # 0 * x = 0, and a zero matrix times anything is zero
        if op in ("max", "min"):
            keep, absorb = (NEG_INF, POS_INF) if op == "max" else (POS_INF, NEG_INF)
            if absorb in marks:
                return absorb  # max(+inf, x) = +inf, min(-inf, x) = -inf
            other = [x for x in args if x != keep]
            return other[0] if other else keep  # max(-inf, x) = x, min(+inf, x) = x
        raise ValueError(f"no structural rule for {op} of an absent slot")  # pragma: no cover


def _is_zero(value: Any) -> bool:
    return isinstance(value, Const) and value.value == 0.0


def specialize(exprs: dict[str, Expr], absent: dict[str, str]) -> dict[str, Expr]:
    """`exprs` with the absent names removed by their rules; a result that is absent
    itself is left out."""
    refs = {
        n.name: n for e in exprs.values() if e is not None for n in walk(e) if isinstance(n, Ref)
    }
    env: dict[str, Any] = _Env(absent, refs)
    out = {}
    for name, expr in exprs.items():
        if expr is None:
            continue
        value = evaluate(expr, env, _Structural())
        if not isinstance(value, str):
            out[name] = value
    return out


class _Env(dict):
    """Every name is its own reference, unless absent."""

    def __init__(self, absent: dict[str, str], refs: dict[str, Ref]) -> None:
        super().__init__()
        self.absent, self.refs = absent, refs

    def __missing__(self, name: str) -> Any:
        return self.absent.get(name) or self.refs[name]


# ---- running an algebra on tensors ----------------------------------------------


def combine_function(algebra: Algebra, first: frozenset[str], second: frozenset[str]):
    """`f(m1, m2)`: the combine of two maps (slot -> tensor) with these slots."""
    where = {operand(s, w): (w - 1, s) for w in (1, 2) for s in algebra.slots}
    return compiled(algebra.specialize_combine(first, second), where)


def apply_function(algebra: Algebra, present: frozenset[str]):
    """`f(m, x)`: the new state's components (x_i -> tensor) from a map and the old
    state's components."""
    where = {s: (0, s) for s in algebra.slots} | {x: (1, x) for x in algebra.components}
    return compiled(algebra.specialize_apply(present), where)


def compiled(exprs: dict[str, Expr], where: dict[str, tuple[int, str]]):
    """A function of dicts returning every expression's value: a reference `name`
    reads `args[i][key]` for `(i, key) = where[name]`; each op is its torch function
    from the op table. Built once, a call costs one Python call per op;
    `x + y * z` runs as one addcmul."""
    import torch

    def build(expr: Expr) -> Callable[[tuple], Any]:
        if isinstance(expr, Ref):
            i, key = where[expr.name]
            return lambda args: args[i][key]
        if isinstance(expr, Const):
            value = expr.value
            return lambda args: value
        assert isinstance(expr, Apply)
        if expr.op == "matmul":  # a matrix slot times a matrix or a vector, per map
            a, b = (build(x) for x in expr.args)
            if len(expr.args[1].dims) == 1:
                return lambda args: (a(args) @ b(args).unsqueeze(-1)).squeeze(-1)
            return lambda args: a(args) @ b(args)
        products = [a for a in expr.args if isinstance(a, Apply) and a.op == "mul"]
        if expr.op == "add" and products:  # x + y * z (or y * z + x: + commutes exactly)
            product = products[-1]
            other = expr.args[0] if product is expr.args[1] else expr.args[1]
            total, (y, z) = build(other), (build(a) for a in product.args)
            return lambda args: torch.addcmul(total(args), y(args), z(args))
        fn = OPS[expr.op].torch
        built = [build(a) for a in expr.args]
        if len(built) == 1:
            (x,) = built
            return lambda args: fn(x(args))
        if len(built) == 3:  # select
            c, x, y = built
            return lambda args: fn(c(args), x(args), y(args))
        x, y = built
        return lambda args: fn(x(args), y(args))

    parts = tuple((name, build(expr)) for name, expr in exprs.items())
    return lambda *args: {name: f(args) for name, f in parts}
