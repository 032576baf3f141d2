"""The generated reverse loop (recc.lowering.reverse, backends/torch/reverse.py): the
step loop's backward without autograd through its T steps.

What every call with gradients of the sequential form runs (tests/test_sequential.py
compares the whole form with the interpreter, hypothesis-drawn specs of every class
included); here: every zoo spec in every regime of its class, the seeds a call
chooses (an output no loss reads, a final state not asked for), and the printed
source.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import recc
from recc.analysis import analyze
from recc.backends.torch.reverse import ReverseLoop, print_reverse
from recc.backends.torch.sequential import SequentialLoop
from recc.errors import RecError
from recc.ir import load
from recc.lowering import sequential_plan
from recc.lowering.reverse import reverse_step
from recc.signature import bind
from recc.testing.agree import disagreements
from recc.testing.regimes import regimes_for

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.rec"))


def reverse_loop(rec):
    loop = ReverseLoop(SequentialLoop(sequential_plan(rec)))

    def run(tensors, init):
        return loop(bind(rec, tensors, init or None, check_nan=False))

    return run


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_zoo_spec_in_every_regime_equals_the_interpreter(path):
    rec = load(path)
    analysis = analyze(rec)
    heads = 2 if rec.name in ("retnet", "gla", "slstm") else None
    run = reverse_loop(rec)
    for regime in regimes_for(analysis.kind):
        for T in (1, 6):
            tensors, init = regime.call(rec, T, seed=T, heads=heads)
            found = disagreements(rec, analysis, run, tensors, init, seed=T)
            assert not found, f"[{regime.name}, T={T}]: " + "; ".join(map(str, found))


TWO_OUTPUTS = """
recurrence two {
  dims D
  input x[D]
  state h[D] = 0
  update h = tanh(0.5 * h + x)
  output y = h * 2
  output z = sqrt(0 * h) + h
}
"""


def test_an_output_no_loss_reads_is_not_seeded():
    """z's derivative is infinite (sqrt at 0): a zero cotangent would make NaN of 0 *
    inf, where autograd, with no cotangent at all, gives the finite gradient."""
    fn = recc.compile(TWO_OUTPUTS, backend="torch", strategy="sequential")
    ref = recc.compile(TWO_OUTPUTS, backend="interpreter")
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(fn(x=x)[0].sum(), x)[0]
    want = torch.autograd.grad(ref(x=x)[0].sum(), x)[0]
    assert got.isfinite().all()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_final_state_asked_for_seeds_the_last_step():
    fn = recc.compile(SPECS[0].parent / "lstm.rec", backend="torch", strategy="sequential")
    ref = recc.compile(SPECS[0].parent / "lstm.rec", backend="interpreter")
    g = torch.Generator().manual_seed(0)
    tensors = {
        p.name: torch.randn(
            *(3 if d == "I" else 4 for d in p.dims), generator=g, dtype=torch.float64
        )
        for p in fn.spec.params
    }
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    for which in (0, 1):  # h's final, c's final
        _, finals = fn(x=x, **tensors, output_final_state=True)
        _, want = ref(x=x, **tensors, output_final_state=True)
        got = torch.autograd.grad(finals[which].sum(), x)[0]
        expected = torch.autograd.grad(want[which].sum(), x)[0]
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_the_printed_reverse_step_reads_as_the_spec():
    seq = sequential_plan(load(SPECS[0].parent / "gru.rec"))
    source, params, kinds = print_reverse(reverse_step(seq, frozenset({"h"}), frozenset({"h"})))
    assert "# spec line 9: let    r = sigmoid(W_ir @ x + b_ir + W_hr @ h + b_hr)" in source
    assert "d_out_h" in params and "d_h" in params
    # the recurrent weights' cotangents come back as outer-product factors
    assert kinds == {
        "W_hr": "outer", "W_hz": "outer", "W_hn": "outer",
        "b_hr": "value", "b_hz": "value", "b_hn": "value",
    }  # fmt: skip
    # a value several cotangents share is one local
    assert source.count("(1.0 - n * n)") == 1


# Every structural op and broadcast a state passes, where name-based broadcasting
# must be printed (a bug found by tests/test_analysis.py: `sum(h)`'s cotangent,
# broadcast back to h, was aligned from the right instead of by name).
STRUCTURAL = {
    "sum": "state h[D] = 0\n update h = tanh(h * k + sum(h))\n output h",
    "dot": "state h[D] = 0\n update h = tanh(k * dot(h, v) + h)\n output h",
    "scalar state": "state c = 0\n update c = tanh(c * 0.5 + sum(k * v))\n output y = c * v",
    "matvec": "state h[D] = 0\n update h = tanh(W @ h + v)\n output h",
    "vecmat": "state h[D] = 0\n update h = tanh(h @ W + v)\n output h",
    "transposed": "state h[D] = 0\n update h = tanh(W.T @ h + v)\n output h",
    "outer": ("state S[D, E] = 0\n update S = tanh(S * 0.5 + outer(k, u))\n output o = S @ w"),
    "matrix readout": (
        "state S[D, E] = 0\n update S = S * sigmoid(k) + outer(v, u)\n output o = tanh(S.T @ k)"
    ),
    "max of scalars": "state h[D] = 0\n update h = max(h * 0.5, sum(k)) + v\n output h",
}


@pytest.mark.parametrize("body", STRUCTURAL.values(), ids=list(STRUCTURAL))
def test_structural_ops_and_broadcasts_equal_the_interpreter(body):
    source = (
        f"recurrence t {{\n dims D, E\n input k[D], v[D], u[E]\n param W[D, D], w[E]\n {body}\n}}\n"
    )
    try:
        rec = load(source)
    except RecError as err:  # pragma: no cover - a typo in the table above
        pytest.fail(str(err))
    analysis = analyze(rec)
    run = reverse_loop(rec)
    for regime in regimes_for(analysis.kind):
        for T in (1, 6):
            tensors, init = regime.call(rec, T, seed=T)
            found = disagreements(rec, analysis, run, tensors, init, seed=T)
            assert not found, f"[{regime.name}, T={T}]: " + "; ".join(map(str, found))
