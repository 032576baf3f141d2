"""The backend registry: what `recc explain` promises is what runs, for every zoo spec.

For each spec and each backend, `explain` says "yes" or "no: <reason>". A
"yes" must run (here, on the CPU; Triton under its interpreter) and agree with
the interpreter, values and gradients; a "no" must be refused by
`recc.compile(..., backend=<it>)` with that same reason. `backend="auto"` runs
the first backend that accepts the call's device.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import recc
from recc import RecError
from recc.backends.registry import NAMES, REFERENCE, REGISTRY, backend_named, verdicts
from recc.testing.agree import disagreements
from recc.testing.regimes import POSITIVE

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.rec"))
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _explained(text: str) -> dict[str, str]:
    """backend -> its verdict line ("yes: ..." or "no: ...") from `recc explain`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("backends"))
    found = {}
    for line in lines[start + 1 :]:
        name, _, verdict = line.strip().partition("  ")
        if name in NAMES:
            found[name] = verdict.strip()
    return found


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_what_explain_promises_is_what_runs(path: Path) -> None:
    fn = recc.compile(path)
    explained = _explained(fn.explain())
    assert list(explained) == list(NAMES)
    tensors, init = POSITIVE.call(fn.spec, T=3, seed=1, B=1)
    for backend, reason in verdicts(fn.plan):
        said = explained[backend.name]
        if reason is not None:
            assert said == f"no: {reason}"
            with pytest.raises(RecError, match="cannot run"):
                recc.compile(path, backend=backend.name)
            continue
        assert said == f"yes: {backend.summary}"
        assert recc.compile(path, backend=backend.name).backend_for(CPU) == backend.name
        found = disagreements(fn.spec, fn.analysis, backend.name, tensors, init, seed=1)
        assert not found, f"{backend.name}: {found[0]}"


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_auto_runs_the_first_backend_that_accepts_the_device(path: Path) -> None:
    fn = recc.compile(path)
    for device in (CPU, CUDA):  # asking about a device needs none here
        first = next(b for b in REGISTRY if b.supports(fn.plan, device, auto=True) is None)
        assert fn.backend_for(device) == first.name
    kernels = fn.plan.algorithm in ("scan", "newton")
    # Triton runs the scan and Newton's linear scans; torch alone the chunkwise form
    # (Triton's chunkwise kernels need strategy='chunkwise') and the sequential loop
    assert fn.backend_for(CPU) == "torch"
    assert fn.backend_for(CUDA) == ("triton" if kernels else "torch")


def test_a_declined_backend_says_why_and_what_runs_instead() -> None:
    with pytest.raises(RecError) as err:
        recc.compile(Path(SPECS[0]).parent / "gru.rec", backend="triton", strategy="sequential")
    assert "no Triton kernel for the sequential algorithm yet (nonlinear class)" in str(err.value)
    assert "use backend='auto' or one of: torch, interpreter" in str(err.value)


def test_a_backend_that_declines_the_device_says_so_at_the_call() -> None:
    fn = recc.compile(Path(SPECS[0]).parent / "mingru.rec", backend="triton")
    triton = backend_named("triton")
    assert triton.supports(fn.plan, torch.device("meta")) is not None
    k = torch.randn(1, 2, 3, device="meta")
    with pytest.raises(RecError, match="backend 'triton' cannot run these tensors: needs CUDA"):
        fn(k=k, v=k, check_nan=False)


def test_every_backend_is_named_once_and_the_reference_accepts_everything() -> None:
    assert len(set(NAMES)) == len(NAMES)
    assert REFERENCE.name == NAMES[-1]
    for path in SPECS:
        assert REFERENCE.supports(recc.compile(path).plan, CPU, auto=True) is None


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at top level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_the_front_ends_import_no_module_of_a_particular_backend() -> None:
    """api, check, explain and the CLI reach backends through the registry only."""
    root = Path(__file__).parent.parent / "recc"
    # and the per-sequence split of packed calls, which is every backend's
    allowed = {"recc.backends.registry", "recc.backends.protocol", "recc.backends.sequences"}
    for name in ("api.py", "verify.py", "report.py", "cli.py", "testing/agree.py"):
        for module in _imports(root / name):
            if module.startswith("recc.backends"):
                assert module in allowed, f"recc/{name} imports {module}"


def test_the_backends_read_plans_and_import_no_analysis() -> None:
    """What a backend knows of a spec comes from its plan (recc.lowering), never from
    re-analysing it."""
    root = Path(__file__).parent.parent / "backends"
    files = sorted(root.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        for module in _imports(path):
            assert not module.startswith("recc.analysis"), f"{path.name} imports {module}"
            assert module not in ("recc.lowering.plan", "recc.lowering.scan"), (path, module)
