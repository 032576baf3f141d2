"""The generated Triton chunkwise kernels (backends/triton/chunk_codegen.py), rank 0.

Under TRITON_INTERPRET=1 on CPU tensors, fp64, against the interpreter
(recc.testing.agree, 1e-10 relative to the largest magnitude): GLA, RetNet and Mamba2
at T in {1, 15, 64, 100, 130}, chunks of 16 and 64, with and without heads, in the
regimes of recc.testing.regimes (tiny dims of 2-4, so padded lanes are exercised), and
at K, V in {16, 32}. The kernels compile ahead of time for sm_80 and sm_90 without
spills. Forward only: a call that needs gradients runs the torch chunkwise path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import recc
from recc.analysis import analyze
from recc.errors import RecError
from recc.ir import load
from recc.lowering import plan
from recc.signature import bind
from recc.testing.agree import disagreements, interpreter_results
from recc.testing.regimes import INTEGERS, regimes_for
from tests.helpers.profiles import SLOW

if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):  # pragma: no cover - conftest sets it
    pytest.skip("Triton kernels need TRITON_INTERPRET=1 here (no GPU)", allow_module_level=True)

from recc.backends.triton.aot import compile_reports  # noqa: E402
from recc.backends.triton.chunk_launch import ChunkKernel, compile_jobs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RANK_ZERO_ZOO = ("gla", "retnet", "mamba2", "mlstm")
REGIMES = tuple(r for r in regimes_for("diagonal") if r is not INTEGERS)
_KERNELS: dict[str, tuple] = {}


def _kernel(name: str):
    if name not in _KERNELS:
        rec = load(ROOT / "specs" / f"{name}.rec")
        a = analyze(rec)
        _KERNELS[name] = (rec, a, ChunkKernel(plan(rec, a).chunk))
    return _KERNELS[name]


def _executor(rec, kernel, L):
    def run(tensors, init):
        with torch.no_grad():
            return kernel(bind(rec, tensors, init, check_nan=False), chunk=L)

    return run


@pytest.mark.parametrize("name", RANK_ZERO_ZOO)
@pytest.mark.parametrize("T", [1, 15, 64, 100, 130])
def test_zoo_specs_run_as_the_interpreter(name, T):
    """Three regimes at each T, in turn (the interpreter is slow): every regime is
    run at several lengths, each with both chunk sizes somewhere."""
    rec, a, kernel = _kernel(name)
    turn = [1, 15, 64, 100, 130].index(T)
    for i in range(turn, turn + 3):
        regime = REGIMES[i % len(REGIMES)]
        L = (16, 64)[i % 2]
        tensors, init = regime.call(rec, T, seed=T + i, heads=(None, 2)[(i + T) % 2])
        found = disagreements(
            rec,
            a,
            _executor(rec, kernel, L),
            tensors,
            init,
            T + i,
            None,
            regime.overflows,
            gradients=False,
        )
        assert not found, f"{name} [{regime.name}, T={T}, L={L}]: " + "; ".join(map(str, found))


@pytest.mark.parametrize(("K", "V"), [(16, 32), (32, 16)])
def test_gla_at_head_dims_of_16_and_32(K, V):
    rec, a, kernel = _kernel("gla")
    g = torch.Generator().manual_seed(K)
    B, T, H = 1, 100, 2
    tensors = {
        "q": torch.randn(B, T, H, K, generator=g, dtype=torch.float64),
        "k": torch.randn(B, T, H, K, generator=g, dtype=torch.float64) * K**-0.5,
        "v": torch.randn(B, T, H, V, generator=g, dtype=torch.float64),
        "gk": torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, generator=g)).double(),
    }
    init = {"S": torch.randn(B, H, K, V, generator=g, dtype=torch.float64)}
    for L in (16, 64):
        found = disagreements(rec, a, _executor(rec, kernel, L), tensors, init, gradients=False)
        assert not found, f"K={K} V={V} L={L}: " + "; ".join(map(str, found))


def test_decays_of_zero_and_runs_that_underflow_stay_exact():
    """Log gates scaled by 10 (decays ~e^-10 a step: products underflow) and gates of
    exactly 0, the failures of log-space kernels (0/0, inf * 0)."""
    rec, a, kernel = _kernel("gla")
    g = torch.Generator().manual_seed(3)
    B, T, H, K, V = 1, 80, 1, 4, 3
    gk = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, generator=g)).double() * 10
    gk[:, 20:30] = -torch.inf  # decay exactly 0
    tensors = {
        "q": torch.randn(B, T, H, K, generator=g, dtype=torch.float64),
        "k": torch.randn(B, T, H, K, generator=g, dtype=torch.float64),
        "v": torch.randn(B, T, H, V, generator=g, dtype=torch.float64),
        "gk": gk,
    }
    init = {"S": torch.randn(B, H, K, V, generator=g, dtype=torch.float64)}
    found = disagreements(
        rec, a, _executor(rec, kernel, 64), tensors, init, gradients=False, finite=True
    )
    assert not found, "; ".join(map(str, found))


def test_the_registry_runs_the_kernels_for_chunkwise_plans_and_torch_for_gradients():
    fn = recc.compile(ROOT / "specs" / "retnet.rec", backend="triton", strategy="chunkwise")
    reference = recc.compile(ROOT / "specs" / "retnet.rec", backend="interpreter")
    g = torch.Generator().manual_seed(0)
    x = {
        "q": torch.randn(2, 40, 2, 4, generator=g, dtype=torch.float64),
        "k": torch.randn(2, 40, 2, 4, generator=g, dtype=torch.float64),
        "v": torch.randn(2, 40, 2, 3, generator=g, dtype=torch.float64),
        "gamma": torch.tensor([0.9, 0.5], dtype=torch.float64),
    }
    with torch.no_grad():
        torch.testing.assert_close(fn(**x), reference(**x), rtol=1e-10, atol=1e-12)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    fn(**leaves).sum().backward()  # the torch chunkwise path, differentiated
    leaves_ref = {k: v.clone().requires_grad_() for k, v in x.items()}
    reference(**leaves_ref).sum().backward()
    for k in x:
        torch.testing.assert_close(leaves[k].grad, leaves_ref[k].grad, rtol=1e-9, atol=1e-12)
    assert "chunkwise kernels run the forward" in fn.explain()


def test_specs_the_kernels_do_not_take_say_why():
    with pytest.raises(RecError, match="rank 1: the Triton chunkwise kernels take rank 0"):
        recc.compile(ROOT / "specs" / "gated_deltanet.rec", backend="triton")
    gla = (ROOT / "specs" / "gla.rec").read_text()
    a_scalar_output = gla.replace("output o = S.T @ q", "output z = dot(S.T @ q, v)")
    torch_path = recc.compile(a_scalar_output, backend="torch", strategy="chunkwise")
    assert torch_path.plan.chunk is not None  # the torch path takes it
    with pytest.raises(RecError, match="output z is not a vector over V"):
        recc.compile(a_scalar_output, backend="triton", strategy="chunkwise")


def test_companions_written_along_a_direction_of_their_own():
    """mLSTM with n also written along q (a write S's rows do not get) and a readout
    that mixes both probes."""
    source = (ROOT / "specs" / "mlstm.rec").read_text()
    source = source.replace("update n = f * n + i * k", "update n = f * n + i * k + q")
    source = source.replace(
        "output h = (C.T @ q) / max(abs(dot(n, q)), 1)",
        "output h = (C.T @ q) * sigmoid(dot(q, n)) + dot(n, k) * v",
    )
    rec = load(source)
    a = analyze(rec)
    kernel = ChunkKernel(plan(rec, a).chunk)
    for T, regime in ((37, REGIMES[0]), (100, REGIMES[2])):
        tensors, init = regime.call(rec, T, seed=T, heads=2)
        found = disagreements(rec, a, _executor(rec, kernel, 32), tensors, init, gradients=False)
        assert not found, "; ".join(map(str, found))


def test_kernels_compile_for_sm80_and_sm90_without_spills():
    jobs, names = [], []
    for name in RANK_ZERO_ZOO:
        for arch in (80, 90):
            jobs += compile_jobs(_kernel(name)[2], arch)
            names += [(name, arch, "states"), (name, arch, "outputs")]
    for where, report in zip(names, compile_reports(jobs)):
        assert report.spill_store_bytes == 0 and report.spill_load_bytes == 0, (where, report)
        assert report.registers > 0 and report.fits_shared_memory, (where, report)


def test_generated_source_computes_the_gates_from_the_raw_inputs():
    """Mamba2's decay exp(-exp(A_log) * softplus(dt + dt_bias)) is computed in the
    kernel from dt, A_log and dt_bias, never passed in precomputed."""
    source = _kernel("mamba2")[2].source
    assert "_softplus(" in source and "tl.exp(A_log_p)" in source
    assert (
        'input_precision="ieee"' in source and "tl.log(" not in source.split("def chunk_states")[1]
    )


@pytest.mark.parametrize("name", RANK_ZERO_ZOO)
def test_counted_bytes_and_flops_are_what_explain_computes(name):
    """`chunk_launch.counts` (what `recc explain --registers` prints per token) equals
    the interpreter's count of every load, store and dot, padding included."""
    from recc.backends.triton.chunk_launch import counts
    from recc.testing.triton_traffic import count_traffic

    rec, _, kernel = _kernel(name)
    p = kernel.plan
    for T, heads in ((100, 2), (64, None)):
        tensors, init = REGIMES[0].call(rec, T, seed=T, heads=heads)
        bound = bind(rec, tensors, init)
        with count_traffic() as traffic, torch.no_grad():
            kernel(bound)
        R, C = bound.sizes[p.rows], bound.sizes[p.cols]
        found = counts(kernel, bound.B, T, bound.H or 1, R, C, word=8)  # fp64
        assert (traffic.bytes_read, traffic.bytes_written, traffic.dot_flops) == (
            found.bytes_read,
            found.bytes_written,
            found.dot_flops,
        ), (name, T)


@settings(SLOW, max_examples=12, deadline=None)
@given(case=st.data())
def test_drawn_matrix_state_specs_run_as_the_interpreter(case):
    """hypothesis-drawn decayed matrix states (decay over either dim or scalar, either
    orientation of the readout, transposes that cancel): the chunkwise kernels against
    the interpreter, where the spec has a chunkwise form the kernels take."""
    from recc.backends.triton.chunk_codegen import Unsupported
    from recc.testing.strategies import matrix_state_spec

    source, _ = case.draw(matrix_state_spec())
    rec = load(source)
    a = analyze(rec)
    lowering = plan(rec, a)
    assume(lowering.chunk is not None)
    try:
        kernel = ChunkKernel(lowering.chunk)
    except Unsupported:
        assume(False)
    regime = case.draw(st.sampled_from(REGIMES), label="regime")
    T = case.draw(st.sampled_from([1, 15, 40]), label="T")
    L = case.draw(st.sampled_from([16, 32]), label="L")
    seed = case.draw(st.integers(0, 2**16), label="seed")
    tensors, init = regime.call(rec, T, seed=seed, heads=case.draw(st.sampled_from([None, 2])))
    reference = interpreter_results(rec, a, tensors, init, seed, gradients=False)
    found = disagreements(
        rec,
        a,
        _executor(rec, kernel, L),
        tensors,
        init,
        seed,
        reference,
        regime.overflows,
        gradients=False,
    )
    assert not found, f"[{regime.name}, T={T}, L={L}]: " + "; ".join(map(str, found))
