"""`recc build`: the generated module imports, runs (Triton under the interpreter, the
torch backend for CPU tensors through its wrapper) and differentiates like the spec."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from recc.analysis import analyze
from recc.cli import main
from recc.interpreter import run
from recc.ir import load
from recc.signature import bind
from recc.testing.agree import disagreements
from recc.testing.triton_interpreter import fast_scan

SPECS = Path(__file__).parent.parent / "specs"


def _build(tmp_path, name):
    result = CliRunner().invoke(main, ["build", str(SPECS / f"{name}.rec"), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = tmp_path / f"{name}.py"
    assert f"wrote {path}" in result.output and "class: diagonal" in result.output
    spec = importlib.util.spec_from_file_location(f"built_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module, path.read_text()


@pytest.mark.parametrize("name", ["mingru", "mamba_s6", "lru"])
def test_built_function_matches_the_interpreter(tmp_path, name):
    module, source = _build(tmp_path, name)
    assert "tl.associative_scan(" in source and "(torch.autograd.Function)" in source
    assert "# spec line" in source
    rec = load(SPECS / f"{name}.rec")
    g = torch.Generator().manual_seed(0)
    sizes = {d: 4 + i for i, d in enumerate(rec.dims)}
    tensors = {
        i.name: torch.rand(2, 13, *(sizes[d] for d in i.dims), generator=g, dtype=torch.float64)
        for i in rec.inputs
    }
    tensors.update(
        {
            p.name: -torch.rand(*(sizes[d] for d in p.dims), generator=g, dtype=torch.float64)
            for p in rec.params
        }
    )
    init = {
        s.name: torch.rand(2, *(sizes[d] for d in s.dims), generator=g, dtype=torch.float64)
        for s in rec.states
    }
    function = getattr(module, "".join(p.capitalize() for p in name.split("_")) + "Scan")
    used = [spec_name for _, spec_name in module.ARGUMENTS]
    n_out = len(rec.outputs)

    def built(given, start):  # the module's autograd.Function: outputs, then final states
        with fast_scan():  # (conftest's fixture also keeps it on for the backward)
            results = function.apply(*({**given, **start}[a] for a in used))
        assert len(results) == n_out + len(rec.states)
        outputs = {o.name: r for o, r in zip(rec.outputs, results[:n_out])}
        return outputs, {s.name: r for s, r in zip(rec.states, results[n_out:])}

    # recc.testing.agree's comparison, each value also held to (rtol, atol) of its own
    # size: values and final states to 1e-10, 1e-12, gradients to 1e-9, 1e-11.
    for gradients, elementwise in ((False, (1e-10, 1e-12)), (True, (1e-9, 1e-11))):
        found = disagreements(
            rec,
            analyze(rec),
            built,
            tensors,
            init,
            gradients=gradients,
            elementwise=elementwise,
            finite=True,
        )
        assert not found, "; ".join(map(str, found))
    # the wrapper: CPU tensors take the torch backend
    outs, _ = run(rec, bind(rec, tensors, init))
    wrapper = getattr(module, name)
    y = wrapper(**tensors, initial_state=init)
    first = next(iter(outs.values()))
    torch.testing.assert_close(y[0] if isinstance(y, tuple) else y, first, rtol=1e-10, atol=1e-12)


def test_build_writes_classes_without_kernels_as_the_torch_loop(tmp_path):
    """A class without Triton kernels gets the module without them: the printed torch
    step looped over time (tests/test_vendored_build.py runs it without recc)."""
    result = CliRunner().invoke(main, ["build", str(SPECS / "gru.rec"), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no Triton kernels (the torch loop only)" in result.output
    source = (tmp_path / "gru.py").read_text()
    assert "\n@triton.jit\n" not in source and "\nimport triton\n" not in source
    assert "NO_KERNELS = 'the nonlinear class has no scan kernel'" in source


# Spec names that are Python keywords, builtins or the generator's own names, a
# comment that would break a docstring, and kernels that read no input.
NASTY = '''# a comment with \\N{oops}, \\x and """ quotes
recurrence lambda {
  dims T, h
  input None[T], init_state[T], x[h]
  param tl[T], torch
  state h_init[T] = 0
  state s[h] = 0
  let h_carry = sigmoid(None) * torch
  let _t2 = tl + h_carry
  let a0_00 = _t2 * init_state
  update h_init = h_carry * h_init + a0_00
  update s = 0.5 * s + x
  output i_b = h_init * 2
  output s
}
'''
PARAMS_ONLY = """recurrence drift {
  dims D
  input x[D]
  param p[D]
  state h[D] = 0
  update h = 0.5 * h + p
  output h
}
"""


@pytest.mark.parametrize("source", [NASTY, PARAMS_ONLY], ids=["nasty-names", "params-only"])
def test_built_module_owns_its_names(tmp_path, source):
    spec_path = tmp_path / "spec.rec"
    spec_path.write_text(source)
    rec = load(spec_path)
    result = CliRunner().invoke(main, ["build", str(spec_path), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = tmp_path / f"{rec.name}.py"
    spec = importlib.util.spec_from_file_location(f"built_{rec.name}_x", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert module.SPEC == source
    g = torch.Generator().manual_seed(1)
    sizes = {d: 3 + i for i, d in enumerate(rec.dims)}
    tensors = {
        i.name: torch.randn(2, 7, *(sizes[d] for d in i.dims), generator=g, dtype=torch.float64)
        for i in rec.inputs
    }
    tensors.update(
        {
            p.name: torch.randn((*(sizes[d] for d in p.dims),), generator=g, dtype=torch.float64)
            for p in rec.params
        }
    )
    leaves = {k: v.clone().requires_grad_() for k, v in tensors.items()}
    init = {
        s.name: torch.zeros(2, *(sizes[d] for d in s.dims), dtype=torch.float64) for s in rec.states
    }
    args = [leaves[n] if kind != "state" else init[n] for kind, n in module.ARGUMENTS]
    wrapper, function = (getattr(module, n) for n in module.__all__)
    with fast_scan():
        results = function.apply(*args)
        loss = sum((r * (i + 1)).sum() for i, r in enumerate(results))
        grads = torch.autograd.grad(
            loss, [leaves[n] for k, n in module.ARGUMENTS if k != "state"], allow_unused=True
        )
    ref = {k: v.detach().clone().requires_grad_() for k, v in tensors.items()}
    outs, finals = run(rec, bind(rec, ref, init))
    want = [*outs.values(), *finals.values()]
    for got, w in zip(results, want):
        torch.testing.assert_close(got, w, rtol=1e-10, atol=1e-12)
    ref_loss = sum((r * (i + 1)).sum() for i, r in enumerate(want))
    ref_grads = torch.autograd.grad(
        ref_loss, [ref[n] for k, n in module.ARGUMENTS if k != "state"], allow_unused=True
    )
    for got, w in zip(grads, ref_grads):
        if w is None:  # not read by the recurrence
            assert got is None or not got.any()
            continue
        torch.testing.assert_close(got, w, rtol=1e-9, atol=1e-11)
    y = wrapper(**tensors)
    torch.testing.assert_close(y[0] if isinstance(y, tuple) else y, want[0])


UNREAD = """recurrence last_gate {
  dims D
  input d[D], x[D]
  state g[D] = 0
  state h[D] = 1
  update g = 0.5 * g + x
  update h = tanh(sqrt(0.0 * d)) * x
  output y = g + d
}
"""


def test_built_module_takes_an_unread_state_from_the_last_step(tmp_path):
    """The kernels leave out a state nothing reads; the wrapper's CUDA branch takes its
    final from the update at the last step (run here with backend="triton": there is
    no GPU), with the loop's values and gradients (no 0 * inf from earlier steps)."""
    spec_path = tmp_path / "spec.rec"
    spec_path.write_text(UNREAD)
    rec = load(spec_path)
    result = CliRunner().invoke(main, ["build", str(spec_path), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    source = (tmp_path / "last_gate.py").read_text()
    assert "_last_step(" in source and "def h_" not in source
    spec = importlib.util.spec_from_file_location("built_last_gate", tmp_path / "last_gate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert [n for k, n in module.ARGUMENTS if k == "state"] == ["g"]  # h is not a kernel state
    g = torch.Generator().manual_seed(3)
    tensors = {n: torch.randn(2, 9, 4, generator=g, dtype=torch.float64) for n in ("d", "x")}
    leaves = {k: v.clone().requires_grad_() for k, v in tensors.items()}
    with fast_scan():
        y, (g_final, h_final) = module.last_gate(
            **leaves, output_final_state=True, backend="triton"
        )
        loss = (y * 1.5).sum() + (g_final * 2).sum() + (h_final * 3).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()))
    ref = {k: v.clone().requires_grad_() for k, v in tensors.items()}
    outs, finals = run(rec, bind(rec, ref, {}))
    for got, want in ((y, outs["y"]), (g_final, finals["g"]), (h_final, finals["h"])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    ref_loss = (outs["y"] * 1.5).sum() + (finals["g"] * 2).sum() + (finals["h"] * 3).sum()
    for got, want in zip(grads, torch.autograd.grad(ref_loss, list(ref.values()))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, equal_nan=True)
    assert not torch.isnan(grads[0][:, :-1]).any()  # only the last step is singular
