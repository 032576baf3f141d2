"""`recc build`: the generated module imports, runs (Triton under the interpreter, the
torch backend for CPU tensors through its wrapper) and differentiates like the spec."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from triton_interpreter import fast_scan  # noqa: E402

from recc.cli import main  # noqa: E402
from recc.interpreter import run  # noqa: E402
from recc.ir import load  # noqa: E402
from recc.signature import bind  # noqa: E402

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
    leaves = {k: v.clone().requires_grad_() for k, v in {**tensors, **init}.items()}
    function = getattr(module, "".join(p.capitalize() for p in name.split("_")) + "Scan")
    used = [
        a for a in function.forward.__code__.co_varnames[1 : function.forward.__code__.co_argcount]
    ]
    args = [leaves[a[: -len("_init")]] if a.endswith("_init") else leaves[a] for a in used]
    with fast_scan():
        results = function.apply(*args)
    reference = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    outs, finals = run(
        rec, bind(rec, {k: reference[k] for k in tensors}, {k: reference[k] for k in init})
    )
    want = [*outs.values(), *finals.values()]
    for got, ref in zip(results, want):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    loss = sum((r * (i + 1)).sum() for i, r in enumerate(results))
    ref_loss = sum((r * (i + 1)).sum() for i, r in enumerate(want))
    with fast_scan():
        grads = torch.autograd.grad(loss, args, allow_unused=True)
    ref_args = [
        reference[a[: -len("_init")]] if a.endswith("_init") else reference[a] for a in used
    ]
    ref_grads = torch.autograd.grad(ref_loss, ref_args, allow_unused=True)
    for a, got, ref in zip(used, grads, ref_grads):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11, msg=a)
    # the wrapper: CPU tensors take the torch backend
    wrapper = getattr(module, name)
    y = wrapper(**tensors, initial_state=init)
    first = next(iter(outs.values())).detach()
    torch.testing.assert_close(y[0] if isinstance(y, tuple) else y, first, rtol=1e-10, atol=1e-12)


def test_build_refuses_classes_without_kernels(tmp_path):
    result = CliRunner().invoke(main, ["build", str(SPECS / "gru.rec"), "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "'gru' (nonlinear) has no generated module yet" in result.output
    assert not (tmp_path / "gru.py").exists()
