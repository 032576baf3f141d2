"""The chunkwise algorithm (recc.lowering.chunk, backends/torch/chunkwise.py) against
the interpreter: outputs, final states and every gradient, fp64, tolerances of
recc.testing.agree (1e-10 relative to the largest magnitude).

Zoo DPLR specs, and the zoo's diagonal specs with a matrix state read out linearly
(GLA, RetNet, Mamba2: rank 0, read as S^T), at the lengths the issue names (T in
1, 15, 64, 100, 130; a ragged last chunk, one step, several chunks), chunk 16 and
64, with and without heads, from zero and declared starts; gates exactly 0 and 1;
hypothesis-drawn DPLR specs.

The "integers" regime is left out for DPLR: integer keys make I - beta k k^T
expansive and non-normal (eigenvalue 1 - beta |k|^2, e.g. -12), the state reaches
1e160 within 130 steps, and two evaluation orders that are equal in exact arithmetic
differ by the product's conditioning times the rounding unit (seen: 2e-9 relative).
The regime exists for MinMax ties; it tests no property of a linear map.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import Phase, assume, event, given, settings
from hypothesis import strategies as st

import recc
from recc.analysis import analyze
from recc.backends.torch.chunkwise import run_chunkwise
from recc.backends.torch.decays import decayed, segment_products
from recc.errors import RecError
from recc.ir import load
from recc.lowering import plan
from recc.signature import bind
from recc.testing.agree import disagreements, interpreter_results, well_conditioned
from recc.testing.regimes import INTEGERS, regimes_for
from recc.testing.strategies import spec_of
from tests.helpers.profiles import SLOW

ROOT = Path(__file__).resolve().parent.parent
DPLR_ZOO = ("deltanet", "gated_deltanet", "deltaproduct", "rwkv7")
DIAGONAL_MATRIX_ZOO = ("gla", "retnet", "mamba2", "mlstm")
# flash-linear-attention's orientation: S[K, V] with a left update, DPLR as S^T
DELTA_RULE_KV = """recurrence delta_rule_kv {
  dims K, V
  input  q[K], k[K], v[V], beta
  state  S[K, V] = 0
  update S = S - outer(k, beta * (S.T @ k - v))
  output o = S.T @ q
}
"""
REGIMES = tuple(r for r in regimes_for("dplr") if r is not INTEGERS)


def _chunked(rec, chunk_plan, L):
    def run(tensors, init):
        return run_chunkwise(chunk_plan, bind(rec, tensors, init, check_nan=False), L)

    return run


def check(rec, regime, T, heads, L, seed, drawn=False):
    """The chunkwise result against the interpreter's. `drawn` (a hypothesis-drawn
    spec): an ill-conditioned call, whose interpreter result is itself undetermined at
    the tolerance (`well_conditioned`), is set aside."""
    a = analyze(rec)
    lowering = plan(rec, a)
    assert lowering.chunk is not None, lowering.no_chunk_plan
    tensors, init = regime.call(rec, T, seed=seed, heads=heads)
    reference = interpreter_results(rec, a, tensors, init, seed)
    if drawn:
        conditioned = well_conditioned(rec, a, tensors, init, reference, seed)
        event("well-conditioned" if conditioned else "ill-conditioned: set aside")
        assume(conditioned)
    backend = _chunked(rec, lowering.chunk, L)
    found = disagreements(rec, a, backend, tensors, init, seed, reference, regime.overflows)
    assert not found, f"[{regime.name}, T={T}, heads={heads}, L={L}]: " + "; ".join(map(str, found))


@pytest.mark.parametrize("name", DPLR_ZOO)
@pytest.mark.parametrize("T", [0, 1, 15, 64, 100, 130])
def test_zoo_dplr_specs_run_chunkwise_as_the_interpreter(name, T):
    rec = load(ROOT / "specs" / f"{name}.rec")
    for i, regime in enumerate(REGIMES):
        for L in (16, 64):
            check(rec, regime, T, heads=(None, 2)[(i + L) % 2], L=L, seed=T + i)


@pytest.mark.parametrize("name", DIAGONAL_MATRIX_ZOO)
@pytest.mark.parametrize("T", [0, 1, 15, 64, 100, 130])
def test_zoo_matrix_state_diagonal_specs_run_chunkwise_as_the_interpreter(name, T):
    rec = load(ROOT / "specs" / f"{name}.rec")
    lowering = plan(rec, analyze(rec))
    # the scan stays (decoding, short T); the chunkwise form is read as S^T
    assert lowering.algorithm == "scan" and lowering.scan is not None
    assert lowering.chunk is not None and lowering.chunk.transposed, lowering.no_chunk_plan
    for i, regime in enumerate(REGIMES):
        for L in (16, 64):
            check(rec, regime, T, heads=(None, 2)[(i + L) % 2], L=L, seed=T + i)


@pytest.mark.parametrize("T", [0, 1, 15, 64, 100, 130])
def test_left_updates_of_a_kv_state_classify_dplr_and_run_chunkwise(T):
    rec = load(DELTA_RULE_KV)
    a = analyze(rec)
    assert a.kind == "dplr" and a.rank == 1 and a.form.transposed
    lowering = plan(rec, a)
    assert lowering.chunk is not None and lowering.chunk.transposed
    # the state comes back as the spec declares it, [K, V]
    assert (lowering.chunk.rows, lowering.chunk.cols) == ("V", "K")
    for i, regime in enumerate(REGIMES):
        check(rec, regime, T, heads=(None, 2)[i % 2], L=(16, 64)[i % 2], seed=T + i)


def decayed_by_definition(left, d, right, strict):
    """sum_c left[s, c, a] * prod_{s < k <= t (or < t)} d_k[c] * right[t, c, b], looped."""
    L, C, A = left.shape
    B = right.shape[-1]
    out = torch.zeros(L, A, L, B, dtype=left.dtype)
    for s in range(L):
        for t in range(s + int(strict), L):
            rho = torch.ones(C, dtype=d.dtype)
            for k in range(s + 1, t + 1 - int(strict)):
                rho = rho * d[k].expand(C)
            out[s, :, t, :] = torch.einsum("ca,c,cb->ab", left[s], rho, right[t])
    return out.reshape(L * A, L * B)


@pytest.mark.parametrize("L", [20, 48, 64])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("columns", [1, 5])
def test_decay_products_factored_by_blocks_equal_the_definition(L, strict, columns):
    """Decays of 0, negative ones, and runs of e^-10 (a log gate scaled by 10) that
    underflow fp64 past 70 steps: every product is one of decays, so each term is
    that of the definition to a few rounding units of itself (one block for L = 20,
    three for 48, four for 64). The bound is per entry, relative to the sum of the
    terms' magnitudes (the sum over columns may cancel); an exact 0 stays 0."""
    gen = torch.Generator().manual_seed(L + columns)
    d = torch.rand(L, columns, generator=gen, dtype=torch.float64)
    d[3] = 0.0
    d[7] = -1.5
    d[L // 2 :] = torch.exp(torch.tensor(-10.0, dtype=torch.float64))
    left = torch.randn(L, 5, 2, generator=gen, dtype=torch.float64)
    right = torch.randn(L, 5, 3, generator=gen, dtype=torch.float64)
    found = decayed(left, d, right, strict)
    expected = decayed_by_definition(left, d, right, strict)
    magnitude = decayed_by_definition(left.abs(), d.abs(), right.abs(), strict)
    assert ((found - expected).abs() <= 1e-13 * magnitude).all()
    assert (found[magnitude == 0] == 0).all() and found.count_nonzero() > 0


def test_the_registry_runs_dplr_specs_chunkwise_on_torch():
    rec = load(ROOT / "specs" / "gated_deltanet.rec")
    lowering = plan(rec, analyze(rec))
    assert lowering.algorithm == "chunkwise" and lowering.chunk is not None
    # one write per step along k: the delta rule's term and the injection share it
    assert lowering.chunk.rank == 1 and len(lowering.chunk.writes) == 1


@pytest.mark.parametrize("gate", [0.0, 1.0])
def test_gates_exactly_zero_and_one(gate):
    """alpha = exp(g) and beta exactly 0 or 1 (g = -inf gives a decay of exactly 0)."""
    rec = load(ROOT / "specs" / "gated_deltanet.rec")
    a = analyze(rec)
    lowering = plan(rec, a)
    gen = torch.Generator().manual_seed(0)
    B, T, K, V = 2, 37, 4, 3
    k = torch.nn.functional.normalize(
        torch.randn(B, T, K, generator=gen, dtype=torch.float64), dim=-1
    )
    tensors = {
        "q": torch.randn(B, T, K, generator=gen, dtype=torch.float64),
        "k": k,
        "v": torch.randn(B, T, V, generator=gen, dtype=torch.float64),
        "g": torch.full((B, T), 0.0 if gate == 1.0 else -torch.inf, dtype=torch.float64),
        "beta": torch.full((B, T), gate, dtype=torch.float64),
    }
    init = {"S": torch.randn(B, V, K, generator=gen, dtype=torch.float64)}
    reference = interpreter_results(rec, a, tensors, init, 0, gradients=False)
    found = disagreements(
        rec, a, _chunked(rec, lowering.chunk, 16), tensors, init, 0, reference, gradients=False
    )
    assert not found, "; ".join(map(str, found))


def test_segment_products_are_exact_cumulative_products():
    d = torch.tensor([[0.5], [0.0], [-2.0], [3.0]], dtype=torch.float64)
    rho = segment_products(d)[..., 0]
    assert rho[4, 0] == 0.0 and rho[4, 2] == -6.0 and rho[3, 2] == -2.0 and rho[1, 0] == 0.5
    assert (rho.diagonal() == 1).all() and (rho.triu(1) == 0).all()


NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


@settings(SLOW, max_examples=10, phases=NO_SHRINK)
@given(case=st.data())
def test_random_dplr_specs_run_chunkwise_as_the_interpreter(case):
    source, _ = case.draw(spec_of("dplr"))
    rec = load(source)
    regime = case.draw(st.sampled_from(REGIMES), label="regime")
    T = case.draw(st.sampled_from([1, 5, 16, 37]), label="T")
    heads = case.draw(st.sampled_from([None, 2]), label="heads")
    L = case.draw(st.sampled_from([4, 16]), label="L")
    check(rec, regime, T, heads, L, case.draw(st.integers(0, 2**16), label="seed"), drawn=True)


# ---- strategy=, and the torch backend's rule between the two forms --------------


def test_strategy_is_checked_against_the_forms_the_spec_has():
    with pytest.raises(RecError, match="unknown strategy"):
        recc.compile(ROOT / "specs" / "gla.rec", strategy="fast")
    two_matrices = """recurrence two {
  dims K, V
  input q[K], k[K], v[V]
  state A[K, V] = 0
  state B[K, V] = 0
  update A = 0.5 * A + outer(k, v)
  update B = 0.9 * B + outer(k, v)
  output o = A.T @ q + B.T @ q
}"""
    with pytest.raises(RecError, match="chunkwise.*takes one matrix state; this spec has A, B"):
        recc.compile(two_matrices, strategy="chunkwise")
    with pytest.raises(RecError, match="strategy='scan'.*no scan form"):
        recc.compile(ROOT / "specs" / "gated_deltanet.rec", strategy="scan")
    with pytest.raises(RecError, match="strategy='chunkwise'.*not.*minmax|diagonal-plus"):
        recc.compile(ROOT / "specs" / "maxplus.rec", strategy="chunkwise")
    # forced chunkwise: Triton's chunkwise kernels on CUDA (rank 0), torch elsewhere
    fn = recc.compile(ROOT / "specs" / "gla.rec", strategy="chunkwise")
    assert fn.plan.algorithm == "chunkwise" and fn.plan.scan is None
    assert fn.backend_for(torch.device("cuda")) == "triton"
    assert fn.backend_for(torch.device("cpu")) == "torch"
    dplr = recc.compile(ROOT / "specs" / "gated_deltanet.rec")
    assert dplr.backend_for(torch.device("cuda")) == "torch"  # rank 1: no kernels yet


def test_auto_runs_the_scan_below_the_rule_and_chunkwise_from_it(monkeypatch):
    from recc.backends.torch import backend as torch_backend

    ran = []
    real = torch_backend.run_chunkwise
    monkeypatch.setattr(
        torch_backend, "run_chunkwise", lambda *a, **k: ran.append(True) or real(*a, **k)
    )
    rec = load(ROOT / "specs" / "gla.rec")
    fn = recc.compile(ROOT / "specs" / "gla.rec", backend="torch")
    reference = recc.compile(ROOT / "specs" / "gla.rec", backend="interpreter")
    assert f"T >= {torch_backend.CHUNKWISE_FROM_T}" in fn.explain()
    gen = torch.Generator().manual_seed(0)
    for T in (0, torch_backend.CHUNKWISE_FROM_T - 1, torch_backend.CHUNKWISE_FROM_T):
        ran.clear()
        x = {
            d.name: torch.randn(2, T, *(3 for _ in d.dims), generator=gen, dtype=torch.float64)
            for d in rec.inputs
        }
        x["gk"] = -x["gk"].abs()
        torch.testing.assert_close(fn(**x), reference(**x), rtol=1e-10, atol=1e-12)
        assert bool(ran) == (T >= torch_backend.CHUNKWISE_FROM_T)


def test_explain_says_why_a_matrix_state_has_no_chunkwise_form():
    """mLSTM runs chunkwise (its normaliser n is one more row of C); with n decaying
    by its own gate it cannot, and explain says why."""
    source = (ROOT / "specs" / "mlstm.rec").read_text()
    assert "no chunkwise form" not in recc.compile(source).explain()
    own_gate = source.replace(
        "input  q[K], k[K], v[V], ig, fg", "input  q[K], k[K], v[V], ig, fg, ng"
    )
    own_gate = own_gate.replace("update n = f * n + i * k", "update n = sigmoid(ng) * n + i * k")
    text = recc.compile(own_gate).explain()
    assert "the scan at every T; no chunkwise form" in text
    assert "state n decays by another factor than" in text


MLSTM_VARIANTS = {
    # the readout's pieces anywhere in a function, and a companion written along a
    # direction of its own
    "two readouts": (
        "output h = (C.T @ q) / max(abs(dot(n, q)), 1)",
        "output h = (C.T @ q) * sigmoid(dot(q, n)) + dot(n, k) * v",
    ),
    "own direction": ("update n = f * n + i * k", "update n = f * n + i * k + q"),
}


@pytest.mark.parametrize("variant", sorted(MLSTM_VARIANTS))
@pytest.mark.parametrize("T", [1, 64, 100])
def test_companion_states_and_functions_of_readouts(variant, T):
    old, new = MLSTM_VARIANTS[variant]
    source = (ROOT / "specs" / "mlstm.rec").read_text()
    assert old in source
    rec = load(source.replace(old, new))
    lowering = plan(rec, analyze(rec))
    assert lowering.chunk is not None and lowering.chunk.companions, lowering.no_chunk_plan
    for i, regime in enumerate(REGIMES):
        check(rec, regime, T, heads=(None, 2)[i % 2], L=(16, 64)[i % 2], seed=T + i)


def test_bf16_inputs_run_chunkwise_in_fp32():
    fn = recc.compile(ROOT / "specs" / "gla.rec", backend="torch", strategy="chunkwise")
    reference = recc.compile(ROOT / "specs" / "gla.rec", backend="interpreter")
    gen = torch.Generator().manual_seed(0)
    x = {n: torch.randn(1, 80, 2, 16, generator=gen) * 0.5 for n in ("q", "k", "v", "gk")}
    x["gk"] = torch.nn.functional.logsigmoid(x["gk"] + 2)
    low = {n: t.to(torch.bfloat16) for n, t in x.items()}
    o = fn(**low)
    assert o.dtype == torch.bfloat16
    exact = reference(**{n: t.double() for n, t in low.items()})
    rms = ((o.double() - exact).pow(2).mean() / exact.pow(2).mean()).sqrt()
    assert rms <= 5e-3  # fla's bf16 output tolerance (relative RMS); bf16 output rounding ~2e-3
