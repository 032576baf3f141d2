"""The step-map algebras (recc.lowering.algebra): associative, with their identity,
`apply` a homomorphism of `combine`, and absent slots exactly their structural element.

Maps are drawn slot by slot (a random subset absent); values are small integers
in fp64, so sums and products are exact and every law holds bit for bit.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from recc.lowering.algebra import (
    EYE,
    NEG_INF,
    POS_INF,
    ZERO,
    Algebra,
    affine,
    apply_function,
    combine_function,
    dense,
    minmax,
    pair,
    routing,
    shift,
)

ALGEBRAS = [affine(1), affine(2), affine(3), pair(1), pair(2), routing(), dense(), shift()] + [
    minmax(s) for s in ("max-min", "max-plus", "min-plus")
]
WITH_IDENTITY = [a for a in ALGEBRAS if a.identity]  # shift has none (see its docstring)
LEFT_IDENTITY_ONLY = ("pair", "routing")  # see recc.lowering.algebra.pair
ELEMENT = {ZERO: 0.0, POS_INF: math.inf, NEG_INF: -math.inf}
N = 4  # maps per slot tensor (each slot holds N maps' values side by side)
SIZE = 3  # a dense map's n


def shape(algebra: Algebra, name: str) -> tuple[int, ...]:
    """A slot's (or component's) tensor: N maps, each a number or an n (x n) tensor."""
    return (N,) + (SIZE,) * len(algebra.dims.get(name, ()))


def identity_map(algebra: Algebra) -> dict[str, torch.Tensor]:
    def value(slot: str, v) -> torch.Tensor:
        if v == EYE:
            return torch.eye(SIZE, dtype=torch.float64).expand(shape(algebra, slot))
        return torch.full(shape(algebra, slot), v, dtype=torch.float64)

    return {s: value(s, v) for s, v in algebra.identity.items()}


@st.composite
def maps(draw, algebra: Algebra) -> dict[str, torch.Tensor]:
    """A map: some slots present (integer values), the others absent (an algebra
    without absent slots has every slot)."""
    present = draw(st.lists(st.sampled_from(algebra.slots), unique=True))
    if not algebra.absent:
        present = list(algebra.slots)

    def draw_slot(slot: str) -> torch.Tensor:
        size = math.prod(shape(algebra, slot))
        low, high = -3, 3
        if algebra.name == "routing" and slot in ("r", "s"):
            low, high = 0, 1  # R and S of a routing
        if algebra.name == "shift" and slot == "n":
            low, high = 1, 3  # a run's length
        values = draw(st.lists(st.integers(low, high), min_size=size, max_size=size))
        return torch.tensor(values, dtype=torch.float64).reshape(shape(algebra, slot))

    return {s: draw_slot(s) for s in sorted(present)}


def combine(algebra: Algebra, m1: dict, m2: dict) -> dict:
    return combine_function(algebra, frozenset(m1), frozenset(m2))(m1, m2)


def materialised(algebra: Algebra, m: dict) -> dict:
    """Every slot, an absent one as its structural element's value."""

    def element(s: str) -> torch.Tensor:
        return torch.full(shape(algebra, s), ELEMENT[algebra.absent[s]], dtype=torch.float64)

    return {s: m[s] if s in m else element(s) for s in algebra.slots}


def same(x: dict, y: dict, algebra: Algebra) -> bool:
    x, y = materialised(algebra, x), materialised(algebra, y)
    return all(torch.equal(x[s], y[s]) for s in algebra.slots)


@given(st.data())
def test_combine_is_associative(data) -> None:
    algebra = data.draw(st.sampled_from(ALGEBRAS))
    m1, m2, m3 = (data.draw(maps(algebra)) for _ in range(3))
    left = combine(algebra, combine(algebra, m1, m2), m3)
    right = combine(algebra, m1, combine(algebra, m2, m3))
    assert same(left, right, algebra)


@given(st.data())
def test_the_identity_map_changes_nothing(data) -> None:
    algebra = data.draw(st.sampled_from(WITH_IDENTITY))
    m = data.draw(maps(algebra))
    identity = identity_map(algebra)
    assert same(combine(algebra, identity, m), m, algebra)
    if algebra.name not in LEFT_IDENTITY_ONLY:
        assert same(combine(algebra, m, identity), m, algebra)


@given(st.data())
def test_an_absent_slot_is_its_structural_element(data) -> None:
    """On finite values, leaving a slot out is materialising its element."""
    algebra = data.draw(st.sampled_from(ALGEBRAS))
    m1, m2 = data.draw(maps(algebra)), data.draw(maps(algebra))
    assert same(
        combine(algebra, m1, m2),
        combine(algebra, materialised(algebra, m1), materialised(algebra, m2)),
        algebra,
    )


def applying_composed_is_applying_both(algebra: Algebra, m1: dict, m2: dict, state: dict) -> bool:
    """Every result of `apply` of the composed map (a routing's g too) is the second
    map's applied to what the first hands on."""

    def apply(m, s):
        """Every result of `apply` (an absent one is 0: the zero map's), keyed by name."""
        out = apply_function(algebra, frozenset(m))(m, s)
        zero = {x: torch.zeros(shape(algebra, x), dtype=torch.float64) for x in algebra.apply}
        return {x: out.get(x, zero[x]) for x in algebra.apply}

    once = apply(combine(algebra, m1, m2), state)
    after_first = apply(m1, state)
    twice = apply(m2, {x: after_first[x] for x in algebra.components})
    assert set(algebra.components) <= set(algebra.apply)
    return all(torch.equal(once[x], twice[x]) for x in algebra.apply)


def states(data, algebra: Algebra) -> dict:
    def draw(x: str) -> torch.Tensor:
        size = math.prod(shape(algebra, x))
        values = data.draw(st.lists(st.integers(-3, 3), min_size=size, max_size=size))
        return torch.tensor(values, dtype=torch.float64).reshape(shape(algebra, x))

    return {x: draw(x) for x in algebra.components}


@given(st.data())
def test_apply_of_a_combined_map_is_applying_both(data) -> None:
    algebra = data.draw(st.sampled_from([a for a in ALGEBRAS if a.apply]))
    m1, m2 = data.draw(maps(algebra)), data.draw(maps(algebra))
    assert applying_composed_is_applying_both(algebra, m1, m2, states(data, algebra))


def test_an_absent_bound_drops_out_even_against_nan() -> None:
    """Structural: a max-plus map without a bound never reads the other operand, so a
    NaN shift of the second map does not reach the composed bound."""
    algebra = minmax("max-plus")
    nan = torch.tensor([math.nan])
    out = combine(algebra, {"a": torch.tensor([1.0])}, {"a": nan, "b": torch.tensor([2.0])})
    assert torch.equal(out["b"], torch.tensor([2.0])) and torch.isnan(out["a"]).all()


def test_a_routing_selects_and_never_multiplies_a_cotangent() -> None:
    """Where the second map routes nothing (R2 = 0), the first's NaN cotangent s1
    stays out of the composed r, as autograd through the loop keeps it out."""
    algebra = routing()
    nan, one, zero = torch.tensor([math.nan]), torch.tensor([1.0]), torch.tensor([0.0])
    first = {"r": one, "s": one, "rv": zero, "sv": nan}
    second = {"r": zero, "s": one, "rv": torch.tensor([2.0]), "sv": zero}
    out = combine(algebra, first, second)
    assert torch.equal(out["rv"], torch.tensor([2.0])) and torch.isnan(out["sv"]).all()


def associative(algebra: Algebra, m1: dict, m2: dict, m3: dict) -> bool:
    left = combine(algebra, combine(algebra, m1, m2), m3)
    return same(left, combine(algebra, m1, combine(algebra, m2, m3)), algebra)


@given(st.data())
def test_routing_laws(data) -> None:
    """The laws above, for the routing algebra on every example."""
    algebra = routing()
    m1, m2, m3 = (data.draw(maps(algebra)) for _ in range(3))
    assert associative(algebra, m1, m2, m3)
    identity = identity_map(algebra)
    assert same(combine(algebra, identity, m1), m1, algebra)
    assert same(
        combine(algebra, m1, m2),
        combine(algebra, materialised(algebra, m1), materialised(algebra, m2)),
        algebra,
    )
    assert applying_composed_is_applying_both(algebra, m1, m2, states(data, algebra))


@given(st.data())
def test_dense_laws_and_agreement_with_the_affine_blocks(data) -> None:
    """The dense maps obey the laws, and compose and apply as affine(n) does with the
    same matrix written slot by slot (a_ij = A[i, j])."""
    algebra, blocks = dense(), affine(SIZE)
    m1, m2, m3 = (data.draw(maps(algebra)) for _ in range(3))
    assert associative(algebra, m1, m2, m3)
    identity = identity_map(algebra)
    assert same(combine(algebra, identity, m1), m1, algebra)
    assert same(combine(algebra, m1, identity), m1, algebra)
    assert applying_composed_is_applying_both(algebra, m1, m2, states(data, algebra))

    def as_slots(m: dict) -> dict:
        full = materialised(algebra, m)
        slots = {f"a_{i}{j}": full["A"][:, i, j] for i in range(SIZE) for j in range(SIZE)}
        return slots | {f"b_{i}": full["b"][:, i] for i in range(SIZE)}

    composed = as_slots(combine(algebra, m1, m2))
    by_blocks = combine(blocks, as_slots(m1), as_slots(m2))
    assert all(torch.equal(composed[s], by_blocks[s]) for s in blocks.slots)


@given(st.lists(st.integers(-3, 3), min_size=1, max_size=9), st.integers(-3, 3))
def test_the_shift_gives_every_steps_previous_value(values, entering) -> None:
    """Runs of one step composed left to right (as a scan does) and applied to the
    entering value give h_{t-1} at every step: the entering value, then each step's
    predecessor, exactly; and the value after the run, the last."""
    algebra = shift()

    def run_of_one(v: int) -> dict:
        return {"v": torch.tensor([float(v)]), "p": torch.tensor([7.0]), "n": torch.ones(1)}

    apply = apply_function(algebra, frozenset(algebra.slots))
    run = run_of_one(values[0])
    prefixes = [run]
    for v in values[1:]:
        run = combine(algebra, run, run_of_one(v))
        prefixes.append(run)
    x = {"x": torch.tensor([float(entering)])}
    olds = [float(apply(m, x)["old"]) for m in prefixes]
    assert olds == [float(entering)] + [float(v) for v in values[:-1]]
    assert float(apply(run, x)["x"]) == float(values[-1])
    assert float(run["n"]) == len(values)
