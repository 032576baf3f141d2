"""`decayed` (backends/torch/decays.py) for a decay over columns, on each of its paths:
one block (L <= BLOCK, or L odd), blocks of BLOCK steps under one or more halvings
(L = BLOCK * 2^k), and blocks of other lengths (L = 20: 4 blocks of 5), against the
definition (tests/test_chunkwise.py) entry by entry, with leading batch axes, and under
smaller BLOCKs (1, 2, 3) so that short chunks take many levels; float64 gradients by
gradcheck; float32 runs of tiny decays that underflow (exact zeros, nothing NaN)."""

from __future__ import annotations

import pytest
import torch

from recc.backends.torch import decays
from recc.backends.torch.decays import decayed
from tests.test_chunkwise import decayed_by_definition

LENGTHS = [1, 2, 3, 5, 8, 9, 12, 16, 20, 24, 40, 64]


def hard_decays(L: int, columns: int, gen: torch.Generator) -> torch.Tensor:
    """Random decays in [0, 1) with an exact 0, a negative one and a run of e^-10."""
    d = torch.rand(L, columns, generator=gen, dtype=torch.float64)
    d[L // 3] = 0.0
    d[(2 * L) // 3] = -1.5
    d[L // 2 + 1 :] = torch.exp(torch.tensor(-10.0, dtype=torch.float64))
    return d


def assert_is_the_definition(left, d, right, strict):
    """Per entry, to a few rounding units of the sum of the terms' magnitudes; an exact
    0 stays 0. Leading axes are checked one slice at a time."""
    found = decayed(left, d, right, strict)
    for i in range(left.shape[0]):
        expected = decayed_by_definition(left[i], d[i], right[i], strict)
        magnitude = decayed_by_definition(left[i].abs(), d[i].abs(), right[i].abs(), strict)
        assert ((found[i] - expected).abs() <= 1e-13 * magnitude).all()
        assert (found[i][magnitude == 0] == 0).all()


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("strict", [False, True])
def test_every_path_equals_the_definition(L, strict):
    gen = torch.Generator().manual_seed(L)
    d = torch.stack([hard_decays(L, 4, gen), torch.rand(L, 4, generator=gen, dtype=torch.float64)])
    left = torch.randn(2, L, 4, 2, generator=gen, dtype=torch.float64)
    right = torch.randn(2, L, 4, 3, generator=gen, dtype=torch.float64)
    assert_is_the_definition(left, d, right, strict)


@pytest.mark.parametrize("block", [1, 2, 3])
@pytest.mark.parametrize("L", [4, 6, 12, 16, 24])
@pytest.mark.parametrize("strict", [False, True])
def test_small_blocks_and_many_levels_equal_the_definition(monkeypatch, block, L, strict):
    monkeypatch.setattr(decays, "BLOCK", block)
    gen = torch.Generator().manual_seed(10 * L + block)
    d = hard_decays(L, 3, gen)[None]
    left = torch.randn(1, L, 3, 1, generator=gen, dtype=torch.float64)
    right = torch.randn(1, L, 3, 2, generator=gen, dtype=torch.float64)
    assert_is_the_definition(left, d, right, strict)


def test_equal_columns_give_the_scalar_decay():
    gen = torch.Generator().manual_seed(0)
    L, C = 32, 5
    d = hard_decays(L, 1, gen)
    left = torch.randn(L, C, 2, generator=gen, dtype=torch.float64)
    right = torch.randn(L, C, 1, generator=gen, dtype=torch.float64)
    for strict in (False, True):
        scalar = decayed(left, d, right, strict)
        columns = decayed(left, d.expand(L, C), right, strict)
        assert torch.allclose(scalar, columns, rtol=1e-13, atol=0.0)


@pytest.mark.parametrize("L", [1, 5, 12, 16, 20])
@pytest.mark.parametrize("strict", [False, True])
def test_gradients_by_gradcheck(L, strict):
    """float64, through every factor (left, the decays, right), zero and negative decays
    included; the halvings of L = 16 (two blocks of 8) and L = 20 (four blocks of 5)."""
    gen = torch.Generator().manual_seed(L)
    d = torch.rand(1, L, 3, generator=gen, dtype=torch.float64) + 0.25
    d[0, L // 3] = 0.0
    d[0, (2 * L) // 3, 1] = -1.5
    left = torch.randn(1, L, 3, 2, generator=gen, dtype=torch.float64)
    right = torch.randn(1, L, 3, 2, generator=gen, dtype=torch.float64)
    inputs = tuple(x.requires_grad_() for x in (left, d, right))
    assert torch.autograd.gradcheck(lambda x, y, z: decayed(x, y, z, strict), inputs)


@pytest.mark.parametrize("strict", [False, True])
def test_float32_runs_of_tiny_decays_underflow_to_exact_zeros(strict):
    """e^-10 per step over 64 steps (e^-640 overall): what underflows is an exact 0, no
    entry and no gradient is NaN or infinite, and near the diagonal D is the definition."""
    gen = torch.Generator().manual_seed(1)
    L, C = 64, 4
    d = torch.full((2, L, C), torch.exp(torch.tensor(-10.0)).item()).requires_grad_()
    left = torch.randn(2, L, C, 1, generator=gen).requires_grad_()
    right = torch.randn(2, L, C, 1, generator=gen).requires_grad_()
    found = decayed(left, d, right, strict)
    found.sum().backward()
    assert torch.isfinite(found).all()
    assert all(torch.isfinite(x.grad).all() for x in (left, d, right))
    s, t = torch.arange(L)[:, None], torch.arange(L)[None, :]
    assert (found[:, t - s > 12] == 0).all()
    expected = decayed_by_definition(left[0].double(), d[0].double(), right[0].double(), strict)
    near = (t - s >= 0) & (t - s <= 2)
    assert torch.allclose(found[0][near].double(), expected[near], rtol=1e-5, atol=1e-30)
