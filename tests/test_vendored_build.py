"""A `recc build` module runs where recc is not importable (issue 7, item 7).

Each test writes a module with `recc build`, then imports and runs it in a
subprocess where `import recc` fails (`sys.modules['recc'] = None`): forward
and backward on CPU tensors through the printed torch loop (`backend="torch"`,
what "auto" picks on a CPU) and, under TRITON_INTERPRET=1, through the Triton
kernels (`backend="triton"`). The subprocess saves what it got (torch.save);
this process compares it with recc's interpreter (values, final states,
gradients, fp64, 1e-10). Also: the module's errors for bad calls, the printed
step against the interpreter for every zoo spec, and the printing table
against the op table.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from recc.backends.torch.printer import PRINT, STRUCTURAL, step_function
from recc.backends.triton import runtime
from recc.cli import main
from recc.interpreter import run
from recc.ir import load
from recc.ir.ops import ELEMENTWISE, OPS
from recc.ir.ops import STRUCTURAL as STRUCTURAL_OPS
from recc.signature import bind, signature_of
from recc.testing.regimes import INTEGERS, NORMAL

SPECS = Path(__file__).parent.parent / "specs"
ZOO = sorted(SPECS.glob("*.rec"))

UNREAD = """recurrence last_gate {
  dims D
  input d[D], x[D]
  state g[D] = 0
  state h[D] = 1
  update g = 0.5 * g + x
  update h = tanh(sqrt(1.0 + d * d)) * x
  output y = g + d
}
"""

# Runs in the subprocess: recc must not be importable there.
CHILD = textwrap.dedent(
    """
    import importlib.util, sys
    sys.modules["recc"] = None  # `import recc` raises ImportError
    import torch
    try:
        import recc  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("recc was importable")
    path, data, out, backends = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    spec = importlib.util.spec_from_file_location("built", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["built"] = module
    spec.loader.exec_module(module)
    assert not [m for m in sys.modules if m == "recc" or m.startswith("recc.")
                if sys.modules[m] is not None]
    call = torch.load(data)
    wrapper = getattr(module, module.__all__[0])
    got = {}
    for backend in backends:
        leaves = {k: v.clone().requires_grad_() for k, v in call["leaves"].items()}
        tensors = {k: leaves[k] for k in call["tensors"]}
        init = {k: leaves[k] for k in call["init"]}
        outs, finals = wrapper(**tensors, initial_state=init or None,
                               output_final_state=True, backend=backend)
        outs = outs if isinstance(outs, tuple) else (outs,)
        finals = finals if isinstance(finals, tuple) else (finals,)
        values = [*outs, *finals]
        loss = sum((v * (i + 1)).sum() for i, v in enumerate(values))
        names = list(leaves)
        grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
        got[backend] = {
            "values": [v.detach() for v in values],
            "grads": {n: g for n, g in zip(names, grads)},
        }
    errors = []
    given = {k: call["leaves"][k] for k in call["tensors"]}
    first = call["tensors"][0]
    bad = {**given, first: given[first][:, :, None]}
    for kwargs in (bad, {k: v for k, v in given.items() if k != first}):
        try:
            wrapper(**kwargs)
        except module.RecError as err:
            errors.append(str(err))
        else:
            errors.append("no error")
    got["errors"] = errors
    torch.save(got, out)
    """
)


def _build(tmp_path: Path, source: Path | str) -> tuple[Path, object]:
    if isinstance(source, str):
        spec_path = tmp_path / "spec.rec"
        spec_path.write_text(source)
    else:
        spec_path = source
    rec = load(spec_path)
    result = CliRunner().invoke(main, ["build", str(spec_path), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    return tmp_path / f"{rec.name}.py", rec


def _run_child(tmp_path: Path, module: Path, rec, backends: list[str], seed: int = 0) -> dict:
    tensors, init = NORMAL.call(rec, 9, seed=seed)
    data, out = tmp_path / "call.pt", tmp_path / "got.pt"
    torch.save({"leaves": {**tensors, **init}, "tensors": list(tensors), "init": list(init)}, data)
    (tmp_path / "child.py").write_text(CHILD)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), str(module), str(data), str(out),
         ",".join(backends)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    got = torch.load(out)
    # the reference: recc's interpreter, here
    leaves = {k: v.clone().requires_grad_() for k, v in {**tensors, **init}.items()}
    outs, finals = run(
        rec, bind(rec, {k: leaves[k] for k in tensors}, {k: leaves[k] for k in init})
    )
    values = [*outs.values(), *finals.values()]
    loss = sum((v * (i + 1)).sum() for i, v in enumerate(values))
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    for backend in backends:
        for i, (a, b) in enumerate(zip(got[backend]["values"], values)):
            torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12, msg=f"{backend} {i}")
        for n, g in zip(names, grads):
            a = got[backend]["grads"][n]
            if g is None:
                assert a is None or not a.any(), (backend, n)
                continue
            torch.testing.assert_close(a, g, rtol=1e-10, atol=1e-12, msg=f"{backend} d{n}")
    return got


@pytest.mark.parametrize(
    "name",
    ["mingru", "mamba_s6", "maxplus", "unread"],
    ids=["vector", "expanded", "minmax", "unread"],
)
def test_built_module_runs_without_recc(tmp_path, name):
    module, rec = _build(tmp_path, UNREAD if name == "unread" else SPECS / f"{name}.rec")
    source = module.read_text()
    assert "import recc" not in source and "from recc" not in source
    assert "\nPLAN = {" in source and "\nSIGNATURE = {" in source
    got = _run_child(tmp_path, module, rec, ["torch", "triton"])
    errors = got["errors"]
    assert "has shape" in errors[0] and "expected" in errors[0] and "hint:" in errors[0]
    assert errors[1].startswith("missing input") and "hint: pass" in errors[1]


@pytest.mark.parametrize("name", ["gru", "deltanet"])
def test_built_module_without_kernels_runs_the_torch_loop(tmp_path, name):
    """Classes without Triton kernels: the module holds the torch loop only."""
    module, rec = _build(tmp_path, SPECS / f"{name}.rec")
    got = _run_child(tmp_path, module, rec, ["auto", "torch"])
    assert got["errors"][1].startswith("missing input")


def test_built_module_refuses_what_it_cannot_run(tmp_path):
    """In-process: the module's own RecError, with a hint, for a bad backend choice."""
    import importlib.util

    module_path, rec = _build(tmp_path, SPECS / "gru.rec")
    spec = importlib.util.spec_from_file_location("built_gru_refuses", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tensors, _ = NORMAL.call(rec, 3)
    with pytest.raises(module.RecError, match="no Triton kernels"):
        module.gru(**tensors, backend="triton")
    with pytest.raises(module.RecError, match="unknown backend"):
        module.gru(**tensors, backend="cuda")
    with pytest.raises(module.RecError, match="output_final_state must be True or False"):
        module.gru(**tensors, output_final_state=1)
    nan = dict(tensors)
    nan["x"] = nan["x"].clone()
    nan["x"][0, 0, 0] = float("nan")
    with pytest.raises(module.RecError, match="contains NaN"):
        module.gru(**nan)


def test_every_elementwise_op_has_a_torch_line():
    assert set(ELEMENTWISE) <= set(PRINT), sorted(set(ELEMENTWISE) - set(PRINT))
    assert set(STRUCTURAL) == set(STRUCTURAL_OPS)
    for name, text in PRINT.items():
        assert text.count("{") == OPS[name].arity, name


def test_the_tie_rule_is_written_once_and_built_modules_carry_it():
    """max/min's tie rule lives in recc/ir/ties.py alone: the op table runs it and
    `recc build` copies it (the bit-for-bit tests below check the behaviour)."""
    from recc.backends.triton.build import runtime_source
    from recc.ir import ties

    root = Path(ties.__file__).parent.parent.parent
    rule = {"maximum", "minimum", "max_picks_first", "min_picks_first"}
    for path in [*root.joinpath("recc").rglob("*.py"), *root.joinpath("backends").rglob("*.py")]:
        defined = {
            node.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef)
        }
        if path.name != "ties.py":
            assert not defined & rule, (path, defined & rule)
    code, names = runtime_source()
    assert rule <= set(names)
    body = Path(ties.__file__).read_text().split('"""', 2)[2].strip()
    assert body in code


@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_printed_step_is_the_interpreter(path):
    """The printed torch step, looped by the runtime, computes what the interpreter does,
    bit for bit (values and gradients), on normal and integer-valued (tied) calls."""
    rec = load(path)
    step, _ = step_function(rec)
    for regime in (NORMAL, INTEGERS):
        tensors, init = regime.call(rec, 6)
        results = []
        for execute in (
            lambda b: run(rec, b),
            lambda b: runtime.run_steps(step, signature_of(rec), b),
        ):
            leaves = {k: v.clone().requires_grad_() for k, v in {**tensors, **init}.items()}
            b = bind(rec, {k: leaves[k] for k in tensors}, {k: leaves[k] for k in init})
            outs, finals = execute(b)
            values = [*outs.values(), *finals.values()]
            loss = sum((v * (i + 1)).sum() for i, v in enumerate(values))
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            results.append((values, grads))
        (want, want_grads), (got, got_grads) = results
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        for a, b in zip(got_grads, want_grads):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_recc_binding_and_the_signature_agree():
    """recc.signature is the adapter of recc.binding: same errors, worded the same."""
    from recc import binding
    from recc.errors import RecError

    rec = load(SPECS / "mamba_s6.rec")
    tensors, _ = NORMAL.call(rec, 4)
    tensors["A"] = tensors["A"][:1]
    with pytest.raises(RecError) as ours:
        bind(rec, tensors)
    with pytest.raises(binding.RecError) as theirs:
        binding.bind(signature_of(rec), tensors)
    assert str(ours.value) == str(theirs.value)
