"""A dim read as a value (`q / sqrt(K)`): the call's size, on every backend."""

from __future__ import annotations

import math

import pytest
import torch

import recc
from recc import RecError
from recc.backends.registry import REGISTRY
from recc.testing.agree import disagreements
from recc.testing.regimes import NORMAL, POSITIVE

SCALED = """recurrence scaled_readout {
  dims K, V
  input k[K], v[V], q[K]
  state S[K, V] = 0
  update S = S + outer(k, v) / sqrt(K)
  output o = (q / sqrt(K)) @ S
}
"""

# A dim that only a state and a param carry, read inside a gate and a MinMax update.
MINMAX = """recurrence running_max {
  dims D, N
  input x[D]
  param c[N]
  state m[D, N] = -inf
  update m = max(m + log(1 / N), outer(x, c) / D)
  output y = sum(m) / N
}
"""


def _by_hand(k, v, q):
    """The scaled readout, written out with the sizes as Python numbers."""
    K = k.shape[-1]
    S = torch.zeros(k.shape[0], K, v.shape[-1], dtype=k.dtype)
    out = []
    for t in range(k.shape[1]):
        S = S + torch.einsum("bk,bv->bkv", k[:, t], v[:, t]) / math.sqrt(K)
        out.append(torch.einsum("bk,bkv->bv", q[:, t] / math.sqrt(K), S))
    return torch.stack(out, 1)


@pytest.mark.parametrize("K", [1, 3, 8])
def test_the_value_is_the_size_of_this_call(K: int) -> None:
    k, v, q = (torch.randn(2, 5, n, dtype=torch.float64) for n in (K, 4, K))
    want = _by_hand(k, v, q)
    for backend in ("interpreter", "torch"):
        got = recc.compile(SCALED, backend=backend)(k=k, v=v, q=q)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("source", [SCALED, MINMAX], ids=["diagonal", "minmax"])
def test_every_backend_agrees_with_the_interpreter(source: str) -> None:
    fn = recc.compile(source)
    assert fn.analysis.kind in ("diagonal", "minmax")
    ran = []
    for backend in REGISTRY:
        if backend.supports(fn.plan) is not None:
            continue
        for regime in (NORMAL, POSITIVE):
            tensors, init = regime.call(fn.spec, T=5, seed=3)
            found = disagreements(fn.spec, fn.analysis, backend.name, tensors, init, seed=3)
            assert not found, f"{backend.name} [{regime.name}]: {found[0]}"
        ran.append(backend.name)
    assert ran == ["triton", "torch", "interpreter"]


def test_a_dim_value_is_no_argument_of_the_call() -> None:
    fn = recc.compile(SCALED)
    k, v = torch.randn(1, 2, 3), torch.randn(1, 2, 4)
    with pytest.raises(RecError, match="'K'"):
        fn(k=k, v=v, q=k, K=torch.tensor(3.0))
    assert [p.name for p in fn.spec.params] == []
    assert fn.spec.dim_values == ("K",)


def test_a_dim_value_is_a_state_free_constant_to_the_classifier() -> None:
    spec = SCALED.replace("S + outer", "exp(-1 / (K * V)) * S + outer")
    analysis = recc.compile(spec).analysis
    assert analysis.kind == "diagonal"
    assert "exp(-1/(K*V))" in " ".join(analysis.transition).replace(" ", "")
