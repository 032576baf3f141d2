"""Property: random diagonal and MinMax specs run on the torch and Triton backends
exactly as the interpreter does (values, final states and every gradient, fp64).

Specs and inputs come from tests/strategies.py; Triton runs in its CPU
interpreter (tests/conftest.py sets TRITON_INTERPRET=1). The default tier uses a
few examples; the `slow` copies many more.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from strategies import SLOW, call_tensors, spec_of  # noqa: E402
from triton_interpreter import fast_scan  # noqa: E402

from recc.analysis import analyze  # noqa: E402
from recc.backends.torch import run_scan  # noqa: E402
from recc.backends.triton.function import triton_scan  # noqa: E402
from recc.backends.triton.launch import ScanKernel  # noqa: E402
from recc.interpreter import run  # noqa: E402
from recc.ir import load  # noqa: E402
from recc.signature import bind  # noqa: E402

# Each example generates and runs Triton kernels in the interpreter: shrinking a failure
# would take many minutes, so failures are reported as found (the spec is printed).
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
FEW = settings(SLOW, max_examples=8, phases=NO_SHRINK)


def _losses(rec, results, seed):
    g = torch.Generator().manual_seed(seed)
    return sum((r * torch.randn(r.shape, generator=g, dtype=r.dtype)).sum() for r in results)


def check_backends(source: str, data) -> None:
    rec = load(source)
    analysis = analyze(rec)
    assert analysis.kind in ("diagonal", "minmax"), analysis.reasons
    tensors, init = data.draw(call_tensors(rec, max_B=2, max_T=20, heads=data.draw(st.booleans())))
    init = init or {}
    kernel = ScanKernel(rec, analysis)

    def run_with(backend):
        leaves = {k: v.clone().requires_grad_() for k, v in {**tensors, **init}.items()}
        given_t = {k: leaves[k] for k in tensors}
        given_i = {k: leaves[k] for k in init}
        if backend == "triton":
            with fast_scan():
                outs, fins = triton_scan(rec, analysis, kernel, given_t, given_i)
        else:
            bound = bind(rec, given_t, given_i)
            outs, fins = (
                run(rec, bound)
                if backend == "interpreter"
                else run_scan(rec, analysis, bound, chunk=data.draw(st.integers(1, 8)))
            )
        results = [*outs.values(), *fins.values()]
        with fast_scan():
            grads = torch.autograd.grad(
                _losses(rec, results, 0), list(leaves.values()), allow_unused=True
            )
        return [r.detach() for r in results], grads

    want, want_grads = run_with("interpreter")
    for backend in ("torch", "triton"):
        got, got_grads = run_with(backend)
        for g, w in zip(got, want):
            torch.testing.assert_close(
                g,
                w,
                rtol=1e-9,
                atol=1e-10,
                equal_nan=True,
                msg=lambda m, b=backend: f"{b} values: {m}",
            )
        for g, w in zip(got_grads, want_grads):
            if w is None:
                continue
            assert g is not None, backend
            torch.testing.assert_close(
                g,
                w,
                rtol=1e-8,
                atol=1e-9,
                equal_nan=True,
                msg=lambda m, b=backend: f"{b} gradients: {m}",
            )


@pytest.mark.parametrize("kind", ["diagonal", "minmax"])
@FEW
@given(case=st.data())
def test_random_specs_on_both_backends(kind, case):
    source, _ = case.draw(spec_of(kind))
    check_backends(source, case)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["diagonal", "minmax"])
@settings(SLOW, max_examples=60, phases=NO_SHRINK)
@given(case=st.data())
def test_random_specs_on_both_backends_slow(kind, case):
    source, _ = case.draw(spec_of(kind))
    check_backends(source, case)
