"""`torch_compile=True`: the torch backend's scan under torch.compile (inductor).

The compiled program must give what the interpreter gives: values, final
states and gradients, in fp64. Each case compiles (seconds per shape at these
tiny sizes), so the fast tier checks minGRU; the slow tier checks every
diagonal and MinMax zoo spec (vector and expanded states, both semirings).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import recc
from recc.analysis import analyze
from recc.backends.torch import supports
from recc.errors import RecError
from recc.ir import load
from recc.verify import random_call

SPECS = sorted(Path(__file__).parent.parent.joinpath("specs").glob("*.rec"))
SCAN_SPECS = [p for p in SPECS if supports(analyze(load(p)))]
FAST = {"mingru"}
FP64 = dict(rtol=1e-10, atol=1e-12)


def _cases():
    for path in SCAN_SPECS:
        marks = () if path.stem in FAST else (pytest.mark.slow,)
        yield pytest.param(path, id=path.stem, marks=marks)


def _outputs_and_grads(fn, tensors, init):
    leaves = {k: v.clone().requires_grad_(True) for k, v in {**tensors, **init}.items()}
    out, final = fn(
        **{k: leaves[k] for k in tensors},
        initial_state=tuple(leaves[k] for k in init) if len(init) > 1 else leaves[next(iter(init))],
        output_final_state=True,
    )
    values = [
        *(out if isinstance(out, tuple) else (out,)),
        *(final if isinstance(final, tuple) else (final,)),
    ]
    g = torch.Generator().manual_seed(0)
    loss = sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum() for x in values)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return [v.detach() for v in values], dict(zip(leaves, grads))


@pytest.mark.parametrize("path", list(_cases()))
def test_compiled_scan_matches_interpreter(path):
    rec_text = path.read_text()
    tensors, init = random_call(load(path), positive=True, T=11, seed=3)
    reference = recc.compile(rec_text, backend="interpreter")
    compiled = recc.compile(rec_text, backend="torch", torch_compile=True)
    want_values, want_grads = _outputs_and_grads(reference, tensors, init)
    got_values, got_grads = _outputs_and_grads(compiled, tensors, init)
    for got, want in zip(got_values, want_values):
        torch.testing.assert_close(got, want, **FP64)
    for name, want in want_grads.items():
        got = got_grads[name]
        if want is None:
            assert got is None or got.abs().max() == 0, name
            continue
        torch.testing.assert_close(got, want, **FP64, msg=lambda m, n=name: f"grad of {n}: {m}")


def test_compiled_scan_takes_new_lengths():
    """A new T recompiles (static shapes) and still agrees with the interpreter."""
    path = SPECS[0].parent / "mingru.rec"
    compiled = recc.compile(path, backend="torch", torch_compile=True)
    reference = recc.compile(path, backend="interpreter")
    for T in (5, 8):
        tensors, _ = random_call(load(path), positive=True, T=T, seed=T)
        torch.testing.assert_close(compiled(**tensors), reference(**tensors), **FP64)


def test_every_compiled_recurrence_gets_its_own_graphs():
    """Dynamo's recompile limit (8) counts per code object: ten compiled
    recurrences in one process must each compile, none fall back to eager."""
    from torch._dynamo.utils import counters

    path = SPECS[0].parent / "mingru.rec"
    tensors, _ = random_call(load(path), positive=True, T=6, seed=6)
    for _ in range(10):
        fn = recc.compile(path, backend="torch", torch_compile=True)
        before = counters["stats"]["unique_graphs"]
        fn(**tensors)
        assert counters["stats"]["unique_graphs"] == before + 1


def test_torch_compile_needs_the_torch_backend():
    with pytest.raises(RecError, match="torch_compile=True needs the torch backend"):
        recc.compile(SPECS[0].parent / "gru.rec", torch_compile=True)


def test_torch_compile_must_be_a_bool():
    with pytest.raises(RecError, match="torch_compile must be True or False"):
        recc.compile(SPECS[0].parent / "mingru.rec", torch_compile="yes")


def test_a_failing_torch_compile_is_a_clear_error(monkeypatch):
    """torch.compile's own failure (here: no C++ compiler) reaches the user as a RecError."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    path = SPECS[0].parent / "mingru.rec"
    fn = recc.compile(path, backend="torch", torch_compile=True)
    tensors, _ = random_call(load(path), positive=True, T=3, B=1)
    with pytest.raises(RecError, match="torch.compile failed for 'mingru'") as err:
        fn(**tensors)
    assert "torch_compile=False" in str(err.value)
