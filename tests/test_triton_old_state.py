"""Readouts of the old state (an output reading a let that reads h_{t-1}) on Triton.

The kernels keep h_{t-1} beside h_t (a shift of the scanned states) in the
forward; in the backward the readouts' cotangent of h_{t-1} at step t is a
term of u_t, the adjoint handed to step t-1, so it crosses time blocks and
reaches the initial state like any other. Checked against the interpreter,
values and gradients, at lengths that cross blocks.
"""

from __future__ import annotations

import pytest

from recc.analysis import analyze
from recc.backends.registry import backend_named
from recc.ir import load
from recc.lowering import plan
from recc.verify import check

OLD_READOUTS = {
    # the let reads h_{t-1}; the output mixes it with h_t and an input
    "vector": (
        "dims D\n input x[D], q[D]\n state h[D] = 0.5\n"
        " let old = q * h\n update h = sigmoid(x) * h + x\n output y = old + tanh(h) * x"
    ),
    # a 2x2 block (LRU-like rotation), both states read one step back
    "block": (
        "dims D\n input x[D]\n param c[D]\n state a[D] = 0.5\n state b[D] = -0.25\n"
        " let ra = a * c\n let rb = b * b\n update a = 0.9 * a - 0.1 * b + x\n"
        " update b = 0.1 * a + 0.9 * b\n output y = ra + rb + a"
    ),
    # a matrix state read through a contraction of its old value
    "matrix": (
        "dims K, V\n input k[K], v[V], q[K]\n state S[K, V] = 0\n"
        " let prev = q @ S\n update S = 0.8 * S + outer(k, v)\n output o = prev"
    ),
    "minmax": (
        "dims D\n input x[D]\n state m[D] = -inf\n let before = exp(-abs(m))\n"
        " update m = max(m, x)\n output y = before * x + m"
    ),
}


@pytest.mark.parametrize("block_t", [8, 64], ids=["blocks-of-8", "one-block"])
@pytest.mark.parametrize("name", sorted(OLD_READOUTS))
def test_a_readout_of_the_old_state_runs_on_triton_as_the_interpreter(name, block_t, monkeypatch):
    from recc.backends.triton import launch

    monkeypatch.setattr(launch, "MAX_BLOCK_T", block_t)  # T = 37: 5 blocks of 8, or one
    rec = load(f"recurrence old_{name} {{\n {OLD_READOUTS[name]}\n}}")
    lowering = plan(rec, analyze(rec))
    assert backend_named("triton").supports(lowering) is None
    result = check(rec, lengths=(1, 13, 37), backends=("triton",))
    assert "triton" in result.checked, result.skipped
    assert result.ok, [str(f) for f in result.failures]


def test_a_readout_one_step_back_of_a_state_that_reads_no_state_is_declined():
    rec = load(
        "recurrence r {\n dims D\n input x[D]\n state h[D] = 0\n let old = 2 * h\n"
        " update h = x\n output y = old\n}"
    )
    reason = backend_named("triton").supports(plan(rec, analyze(rec)))
    assert reason is not None and "one step back" in reason and "torch backend" in reason


def test_the_kernels_that_keep_the_old_state_compile_ahead_of_time_without_spills():
    from recc.backends.triton.aot import compile_reports
    from recc.backends.triton.launch import ScanKernel, compile_jobs

    jobs, names = [], []
    for name in ("vector", "minmax"):
        rec = load(f"recurrence old_{name} {{\n {OLD_READOUTS[name]}\n}}")
        kernel = ScanKernel(plan(rec, analyze(rec)).scan)
        for arch in (80, 90):
            jobs.extend(compile_jobs(kernel, arch))
            names += [(name, arch, "fwd"), (name, arch, "fwd+ckpt"), (name, arch, "bwd")]
    for where, report in zip(names, compile_reports(jobs)):
        assert report.spill_store_bytes == 0 and report.spill_load_bytes == 0, (where, report)
        assert report.registers > 0 and report.fits_shared_memory, (where, report)
