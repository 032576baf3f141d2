"""Newton on the Triton backend: each iteration's linear recurrence, and the
backward's adjoint, on the generated scan kernels (recc.backends.triton.backend,
`_newton_executor`); the step's evaluation and the fallback loop are the torch
backend's. Under TRITON_INTERPRET on CPU tensors at tiny shapes, against the
interpreter (fp64, values, finals, every gradient); the kernels compile ahead of
time for sm_80 and sm_90 without spills.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):  # pragma: no cover - conftest sets it
    pytest.skip("Triton kernels need TRITON_INTERPRET=1 here (no GPU)", allow_module_level=True)

import recc  # noqa: E402
from recc.analysis import analyze  # noqa: E402
from recc.backends.protocol import Call  # noqa: E402
from recc.backends.torch.newton import NewtonFallbackWarning, torch_scan  # noqa: E402
from recc.backends.triton.aot import compile_reports  # noqa: E402
from recc.backends.triton.backend import TRITON  # noqa: E402
from recc.backends.triton.launch import compile_jobs  # noqa: E402
from recc.signature import bind  # noqa: E402
from recc.testing.agree import disagreements  # noqa: E402
from recc.testing.regimes import NORMAL, SATURATING  # noqa: E402

SPECS = Path(__file__).parent.parent / "specs"
NONLINEAR = ["elman", "gru", "indrnn", "lstm", "ltc", "paragru", "paralstm", "slstm"]


@pytest.mark.parametrize("name", NONLINEAR)
@pytest.mark.parametrize("T", [1, 6, 13])
def test_nonlinear_zoo_specs_through_newton_on_triton_scans(name, T):
    fn = recc.compile(SPECS / f"{name}.rec", backend="triton", strategy="newton")
    rec, analysis = fn.spec, analyze(fn.spec)
    executor = fn._executor("triton")
    launched = []
    solver = executor.solver
    assert solver.run_scan is not torch_scan

    def counted(facts, bound, scan=solver.run_scan):
        launched.append(facts.spec.name)
        return scan(facts, bound)

    solver.run_scan = counted

    def run(tensors, init):
        bound = bind(rec, tensors, init or None, check_nan=False)
        return executor(Call(bound, tensors, init))

    heads = 2 if name == "slstm" else None
    for regime in (NORMAL, SATURATING):
        launched.clear()
        tensors, init = regime.call(rec, T, seed=T, heads=heads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NewtonFallbackWarning)  # the loop is checked too
            found = disagreements(rec, analysis, run, tensors, init, seed=T)
        assert not found, f"[{regime.name}, T={T}]: " + "; ".join(map(str, found))
        stats = executor.last_stats
        assert stats.converged or stats.fell_back
        # each iteration one step scan; the backward (at the loop's answer too) adjoints
        steps = [n for n in launched if n.startswith("newton_step_of")]
        assert len(steps) == stats.iterations, (launched, stats)
        assert any(n.startswith("newton_adjoint_of") for n in launched), launched


def test_explain_says_what_runs_on_triton():
    fn = recc.compile(SPECS / "paralstm.rec", backend="triton")
    notes = " ".join(TRITON.notes(fn.plan))
    assert "T >= 128: Newton" in notes
    assert "generated scan kernel" in notes


def test_newton_scan_kernels_compile_for_sm80_and_sm90_without_spills():
    jobs, names = [], []
    for name in NONLINEAR:
        kernels = TRITON._kernel(recc.compile(SPECS / f"{name}.rec").plan)
        assert not isinstance(kernels, str), (name, kernels)
        for arch in (80, 90):
            for which, kernel in zip(("step", "adjoint"), kernels):
                jobs.extend(compile_jobs(kernel, arch)[:1])  # the forward: all Newton runs
                names.append((name, arch, which))
    for where, report in zip(names, compile_reports(jobs)):
        assert report.spill_store_bytes == 0 and report.spill_load_bytes == 0, (where, report)
        assert report.registers > 0 and report.fits_shared_memory, (where, report)
