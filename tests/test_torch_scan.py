"""The torch scan backend against the interpreter: values, final states, gradients.

Every diagonal and MinMax zoo spec, at awkward lengths (chunks with padding),
with and without heads, and a long sequence; fp64 must agree to round-off,
fp32 and bf16 within the stated tolerances. The comparison is recc.testing.agree's
(`recc check`'s), with each value also held to FP64 = (rtol, atol) of its own size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recc.analysis import analyze
from recc.backends.torch import run_scan
from recc.backends.torch.scan import chunk_length
from recc.interpreter import run
from recc.ir import load
from recc.lowering import plan, scan_plan
from recc.signature import bind
from recc.testing.agree import disagreements
from recc.verify import random_call

SPECS = sorted(Path(__file__).parent.parent.joinpath("specs").glob("*.rec"))
SCAN_SPECS = [p for p in SPECS if plan(load(p), analyze(load(p))).scan is not None]
FP64 = dict(rtol=1e-10, atol=1e-12)
ELEMENTWISE = (FP64["rtol"], FP64["atol"])


def test_every_diagonal_and_minmax_zoo_spec_is_covered():
    names = {p.stem for p in SCAN_SPECS}
    assert {"mingru", "lru", "mamba_s6", "gla", "minmax_rnc", "maxplus"} <= names
    assert len(names) == 15


def _agrees(rec, tensors, init, chunk=None, gradients=False, seed=0):
    """The scan (at this chunk length) against the interpreter, by recc.testing.agree."""
    a = analyze(rec)
    facts = scan_plan(rec, a)

    def scan(given, start):
        return run_scan(facts, bind(rec, given, start), chunk=chunk)

    found = disagreements(
        rec, a, scan, tensors, init, seed, gradients=gradients, elementwise=ELEMENTWISE, finite=True
    )
    assert not found, "; ".join(map(str, found))


@pytest.mark.parametrize("T", [1, 17, 64, 100])
@pytest.mark.parametrize("path", SCAN_SPECS, ids=[p.stem for p in SCAN_SPECS])
def test_values_match_interpreter(path, T):
    rec = load(path)
    tensors, init = random_call(rec, positive=True, T=T, seed=T)
    _agrees(rec, tensors, init)


@pytest.mark.parametrize("path", SCAN_SPECS, ids=[p.stem for p in SCAN_SPECS])
def test_gradients_match_interpreter(path):
    rec = load(path)
    tensors, init = random_call(rec, positive=True, T=23, seed=1)
    _agrees(rec, tensors, init, chunk=5, gradients=True)


@pytest.mark.parametrize("path", SCAN_SPECS, ids=[p.stem for p in SCAN_SPECS])
def test_heads(path):
    rec = load(path)
    tensors, init = random_call(rec, positive=True, T=9, B=2)
    H = 3
    inputs = {i.name for i in rec.inputs}
    heads = {
        k: (
            v.unsqueeze(2).repeat(1, 1, H, *[1] * (v.dim() - 2))
            * torch.linspace(0.5, 1, H).view(1, 1, H, *[1] * (v.dim() - 2)).double()
            if k in inputs
            else v
        )
        for k, v in tensors.items()
    }
    init_h = {k: v.unsqueeze(1).repeat(1, H, *[1] * (v.dim() - 1)) for k, v in init.items()}
    _agrees(rec, heads, init_h, chunk=4)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_any_chunk_length(chunk):
    rec = load(SPECS[0].parent / "lru.rec")
    tensors, init = random_call(rec, positive=True, T=20)
    _agrees(rec, tensors, init, chunk=chunk)


def test_long_sequence_mingru_and_mamba():
    for name in ("mingru", "mamba_s6"):
        rec = load(SPECS[0].parent / f"{name}.rec")
        tensors, init = random_call(rec, positive=False, T=4096, B=1)
        assert chunk_length(4096) == 64
        # Hand-rolled, not agree's: with these inputs mamba_s6's outputs overflow to inf
        # from step 1266 on, in the interpreter too, and this compares those infs (agree
        # compares nothing past an overflow).
        out_i, _ = run(rec, bind(rec, tensors, init))
        out_s, _ = run_scan(scan_plan(rec, analyze(rec)), bind(rec, tensors, init))
        for key in out_i:
            torch.testing.assert_close(out_s[key], out_i[key], **FP64)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_low_precision_inputs(dtype, tol):
    """fp32 and bf16 inputs: computed in fp32 by both; the fp64 result is the reference."""
    rec = load(SPECS[0].parent / "mingru.rec")
    tensors, init = random_call(rec, positive=False, T=300)
    a = analyze(rec)
    ref, _ = run(rec, bind(rec, tensors, init))
    low = {k: v.to(dtype) for k, v in tensors.items()}
    init32 = {k: v.float() for k, v in init.items()}
    out, fin = run_scan(scan_plan(rec, a), bind(rec, low, init32))
    assert out["h"].dtype == dtype and fin["h"].dtype == torch.float32
    torch.testing.assert_close(out["h"].double(), ref["h"], rtol=tol, atol=tol)


STATE_DEPENDENT_LET = """
recurrence readout_let {
  dims D
  input k[D], v[D]
  state h[D] = 0
  let z = sigmoid(k)
  let g = tanh(h) * z + v        # reads the old state; only the output does
  update h = (1 - z) * h + z * v
  output y = h * g + h
}
"""

EXPANDED_STATE_LET = """
recurrence expanded_let {
  dims D, N
  input k[D], v[D], c[N]
  state h[D, N] = 0
  let z = sigmoid(k)
  let g = h * z                # reads the old state
  update h = (1 - z) * h + outer(z * v, c)
  output y = (h + g) @ c
}
"""


@pytest.mark.parametrize("chunk", [1, 4, 5])
@pytest.mark.parametrize(
    "spec", [STATE_DEPENDENT_LET, EXPANDED_STATE_LET], ids=["vector", "expanded"]
)
def test_state_dependent_let_reads_the_old_state(spec, chunk):
    """A let that reads the state sees the state before the update, on both paths."""
    rec = load(spec)
    a = analyze(rec)
    assert a.kind == "diagonal"
    tensors, init = random_call(rec, positive=False, T=17, seed=4)
    leaves = {k: v.requires_grad_(True) for k, v in {**tensors, **init}.items()}
    results = []
    for runner in (lambda b: run(rec, b), lambda b: run_scan(scan_plan(rec, a), b, chunk=chunk)):
        bound = bind(rec, {k: leaves[k] for k in tensors}, {k: leaves[k] for k in init})
        outs, fins = runner(bound)
        loss = (outs["y"] * torch.linspace(-1, 1, outs["y"].numel()).view_as(outs["y"])).sum()
        results.append((outs["y"].detach(), torch.autograd.grad(loss, list(leaves.values()))))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, **FP64)
    for gw, gg in zip(want_grads, got_grads):
        torch.testing.assert_close(gg, gw, **FP64)


def test_expanded_state_backward_does_not_keep_the_state_history():
    """Mamba's [D, N] state under autograd: what the forward saves for the
    backward (counted by a saved-tensors hook) stays far below the [B, T, D, N]
    state history; the checkpointed segments recompute it instead."""
    path = next(p for p in SCAN_SPECS if p.stem == "mamba_s6")
    rec = load(path)
    sizes = {"D": 16, "N": 8}
    B, T = 2, 256
    g = torch.Generator().manual_seed(0)
    leaves = {
        i.name: torch.randn(B, T, *[sizes[d] for d in i.dims], generator=g, dtype=torch.float64)
        for i in rec.inputs
    }
    leaves.update(
        {
            p.name: -torch.rand(*[sizes[d] for d in p.dims], generator=g, dtype=torch.float64)
            for p in rec.params
        }
    )
    leaves = {k: v.requires_grad_() for k, v in leaves.items()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs, _ = run_scan(scan_plan(rec, analyze(rec)), bind(rec, leaves))
    history = B * T * sizes["D"] * sizes["N"] * 8
    inputs = sum(v.numel() * 8 for k, v in leaves.items())
    saved = sum(storages.values())
    assert saved < history / 4, (saved, inputs, history)
    outs["y"].sum().backward()  # and the recomputing backward runs
    assert all(v.grad is not None for v in leaves.values())


# Found by benchmarks/fuzz.py: an update that reads no state has no identity map,
# so its padded steps (past T, in the last chunk) held state 0, and a readout
# `p / h` there, though discarded, put 0 * inf = NaN into p's gradient.
@pytest.mark.parametrize("expanded", [False, True])
def test_padded_steps_leave_no_trace_in_the_gradients(expanded):
    from recc.verify import check

    if expanded:  # a [D, N] state: the per-step path
        body = (
            "dims D, N\n input x[D], u[N]\n param p[D, N]\n state h[D, N] = 1\n"
            " update h = outer(x, u)\n output y = p / h"
        )
    else:
        body = "dims D\n input x[D]\n param p[D]\n state h[D] = 1\n update h = x\n output y = p / h"
    rec = load(f"recurrence padded {{\n {body}\n}}")
    for T in (5, 13, 37):  # none a multiple of its chunk length
        assert T % chunk_length(T)
    result = check(rec, lengths=(5, 13, 37), backends=("torch", "triton"))
    assert {"torch", "triton"} <= set(result.checked), result.skipped
    assert result.ok, [str(f) for f in result.failures]


# Found by benchmarks/fuzz.py: a state no update or output reads is seen only as a
# final state, so the loop differentiates its update at the last step alone; the
# backends differentiated every step's, and at the others (cotangent 0) sqrt's
# infinite derivative at 0 made 0 * inf = NaN in the input's gradient.
UNREAD = {
    "reads-no-state": (
        "dims D\n input d[D], x[D]\n param p[D]\n state g[D] = 0\n state h[D] = 1\n"
        " let r = sqrt(0.0 * d) + p\n update g = 0.5 * g + x\n update h = tanh(r) * x\n"
        " output y = g + d"
    ),
    "reads-a-state": (
        "dims D\n input d[D], x[D]\n state g[D] = 0\n state h[D] = 0\n"
        " update g = 0.5 * g + x\n update h = 2 * g + sqrt(0.0 * d)\n output y = g + d"
    ),
    "only-unread-states": "dims D\n input d[D]\n state h[D] = 0\n update h = tanh(sqrt(0.0 * d))\n"
    " output y = d",
    "expanded": (
        "dims D, N\n input d[D], u[N]\n state g[D, N] = 0\n state h[D, N] = 0\n"
        " update g = 0.5 * g + outer(d, u)\n update h = outer(sqrt(0.0 * d), u)\n"
        " output y = g @ u"
    ),
    "expanded-reads-a-state": (
        "dims D, N\n input d[D], u[N]\n state g[D, N] = 0\n state h[D, N] = 0\n"
        " update g = 0.5 * g + outer(d, u)\n update h = g + outer(sqrt(0.0 * d), u)\n"
        " output y = g @ u"
    ),
}


@pytest.mark.parametrize("name", list(UNREAD))
def test_a_state_nothing_reads_is_differentiated_at_its_last_step_only(name):
    from recc.verify import check

    rec = load(f"recurrence unread {{\n {UNREAD[name]}\n}}")
    result = check(rec, lengths=(1, 5, 13, 37), backends=("torch", "triton"))
    assert "torch" in result.checked, result.skipped
    assert result.ok, [str(f) for f in result.failures]
    if name in ("reads-no-state", "expanded"):  # the kernels leave the state out
        assert "triton" in result.checked, result.skipped
    else:  # the kernels would need the read state one step before the end
        assert "triton" not in result.checked
        assert "the torch backend computes" in result.skipped["triton"]
