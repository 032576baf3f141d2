"""`torch_compile=True`: the torch backend's scan under torch.compile (inductor).

The compiled program must give what the interpreter gives: values, final
states and gradients, in fp64 (recc.testing.agree's comparison, `recc check`'s,
each value also held to FP64 = (rtol, atol) of its own size). Each case
compiles (seconds per shape at these tiny sizes), so the fast tier checks
minGRU; the slow tier checks every diagonal and MinMax zoo spec (vector and
expanded states, both semirings).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import recc
from recc.analysis import analyze
from recc.backends.protocol import Options
from recc.errors import RecError
from recc.ir import load
from recc.lowering import plan
from recc.testing.agree import disagreements
from recc.verify import random_call

SPECS = sorted(Path(__file__).parent.parent.joinpath("specs").glob("*.rec"))
SCAN_SPECS = [p for p in SPECS if plan(load(p), analyze(load(p))).scan is not None]
FAST = {"mingru"}
FP64 = dict(rtol=1e-10, atol=1e-12)


def _cases():
    for path in SCAN_SPECS:
        marks = () if path.stem in FAST else (pytest.mark.slow,)
        yield pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", list(_cases()))
def test_compiled_scan_matches_interpreter(path):
    from torch._dynamo.utils import counters

    rec = load(path)
    tensors, init = random_call(rec, positive=True, T=11, seed=3)
    before = counters["stats"]["unique_graphs"]
    found = disagreements(
        rec,
        analyze(rec),
        "torch",
        tensors,
        init,
        options=Options(torch_compile=True),
        elementwise=(FP64["rtol"], FP64["atol"]),
        finite=True,
    )
    assert not found, "; ".join(map(str, found))
    assert counters["stats"]["unique_graphs"] > before  # it ran under torch.compile


def test_compiled_scan_takes_new_lengths():
    """A new T recompiles (static shapes) and still agrees with the interpreter."""
    path = SPECS[0].parent / "mingru.rec"
    compiled = recc.compile(path, backend="torch", torch_compile=True)

    def call(given, start):  # one compiled object for every length
        y, h = compiled(**given, initial_state=start or None, output_final_state=True)
        return {"h": y}, {"h": h}

    for T in (5, 8):
        tensors, _ = random_call(compiled.spec, positive=True, T=T, seed=T)
        found = disagreements(
            compiled.spec,
            compiled.analysis,
            call,
            tensors,
            {},
            gradients=False,
            elementwise=(FP64["rtol"], FP64["atol"]),
            finite=True,
        )
        assert not found, "; ".join(map(str, found))


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
        recc.compile(SPECS[0].parent / "gru.rec", backend="interpreter", torch_compile=True)


def test_torch_compile_must_be_a_bool():
    with pytest.raises(RecError, match="torch_compile must be True or False"):
        recc.compile(SPECS[0].parent / "mingru.rec", torch_compile="yes")


def test_a_failing_torch_compile_is_a_clear_error():
    """torch.compile's own failure (here: no C++ compiler) reaches the user as a RecError."""
    import torch._inductor.config as inductor_config

    # inductor's own patch: monkeypatch's undo leaves its config without the key
    no_compiler = inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False})
    path = SPECS[0].parent / "mingru.rec"
    fn = recc.compile(path, backend="torch", torch_compile=True)
    tensors, _ = random_call(load(path), positive=True, T=3, B=1)
    with no_compiler, pytest.raises(RecError, match="torch.compile failed for 'mingru'") as err:
        fn(**tensors)
    assert "torch_compile=False" in str(err.value)


def test_compiled_sequential_loop_matches_interpreter():
    """A nonlinear spec's loop with its step under torch.compile: values, final
    states and gradients as the interpreter's."""
    from torch._dynamo.utils import counters

    rec = load(SPECS[0].parent / "gru.rec")
    tensors, init = random_call(rec, positive=False, T=5, seed=4)
    before = counters["stats"]["unique_graphs"]
    found = disagreements(
        rec,
        analyze(rec),
        "torch",
        tensors,
        init,
        options=Options(torch_compile=True),
        elementwise=(FP64["rtol"], FP64["atol"]),
        finite=True,
    )
    assert not found, "; ".join(map(str, found))
    assert counters["stats"]["unique_graphs"] > before  # the step ran under torch.compile
