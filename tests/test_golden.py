"""Golden files of generated code: every change to what recc prints is seen in review.

`tests/golden/<spec>.triton.py.expected` holds the Triton scan kernel module of each
zoo spec that has one, `<spec>.chunk.py.expected` its chunkwise kernel module, and
`tests/golden/<spec>.build.py.expected` the `recc build` module of a few. A test
fails on any difference and prints it; after reading the diff, accept the new
text with

    RECC_ACCEPT_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

(which rewrites the files; commit them with the change that caused them).
"""

from __future__ import annotations

import ast
import difflib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recc.analysis import analyze
from recc.backends.triton.build import build_module
from recc.backends.triton.scan_codegen import Unsupported, generate_scan_module, kernel_spec
from recc.ir import load
from recc.ir.nodes import Apply, Ref
from recc.lowering import plan

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden"
SPECS = sorted((ROOT / "specs").glob("*.rec"))
ACCEPT = os.environ.get("RECC_ACCEPT_GOLDEN", "") not in ("", "0")
BUILT = ("mingru", "mamba_s6", "maxplus")  # a vector state, an expanded one, MinMax


def _load(path: Path):
    rec = load(path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path)
    return rec, analyze(rec)


def _kernel_source(path: Path) -> str | None:
    rec, analysis = _load(path)
    facts = plan(rec, analysis).scan
    if facts is None:
        return None
    try:
        return generate_scan_module(kernel_spec(facts))[0]
    except Unsupported:
        return None


def _chunk_source(path: Path) -> str | None:
    from recc.backends.triton.chunk_codegen import Unsupported as NoChunkKernel
    from recc.backends.triton.chunk_codegen import generate_chunk_module

    rec, analysis = _load(path)
    chunk = plan(rec, analysis).chunk
    if chunk is None:
        return None
    try:
        return generate_chunk_module(chunk)[0]
    except NoChunkKernel:
        return None


def _check(name: str, text: str) -> None:
    target = GOLDEN / name
    if ACCEPT:
        GOLDEN.mkdir(exist_ok=True)
        target.write_text(text)
        return
    assert target.exists(), f"no golden file {target}; accept one with RECC_ACCEPT_GOLDEN=1"
    expected = target.read_text()
    if text != expected:
        diff = difflib.unified_diff(
            expected.splitlines(), text.splitlines(), "expected", "generated", lineterm=""
        )
        shown = "\n".join(list(diff)[:80])
        pytest.fail(
            f"generated code differs from {target.name}:\n{shown}\n"
            "read the diff; if it is intended, accept it with RECC_ACCEPT_GOLDEN=1"
        )


@pytest.fixture(autouse=True)
def _from_the_repo_root(monkeypatch):
    # spec file names appear in the generated text: load them by relative path
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_triton_kernels_match_their_golden_file(path: Path) -> None:
    source = _kernel_source(path)
    name = f"{path.stem}.triton.py.expected"
    if source is None:
        assert not (GOLDEN / name).exists(), f"{name} is stale: the spec has no kernel now"
        return
    _check(name, source)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_chunkwise_kernels_match_their_golden_file(path: Path) -> None:
    source = _chunk_source(path)
    name = f"{path.stem}.chunk.py.expected"
    if source is None:
        assert not (GOLDEN / name).exists(), f"{name} is stale: the spec has no kernel now"
        return
    _check(name, source)


@pytest.mark.parametrize("stem", BUILT)
def test_built_modules_match_their_golden_file(stem: str) -> None:
    rec, analysis = _load(ROOT / "specs" / f"{stem}.rec")
    _check(f"{stem}.build.py.expected", build_module(plan(rec, analysis)))


def test_every_golden_file_belongs_to_a_test() -> None:
    wanted = {f"{p.stem}.triton.py.expected" for p in SPECS if _kernel_source(p) is not None}
    wanted |= {f"{p.stem}.chunk.py.expected" for p in SPECS if _chunk_source(p) is not None}
    wanted |= {f"{stem}.build.py.expected" for stem in BUILT}
    present = {p.name for p in GOLDEN.glob("*.expected")}
    assert present == wanted, (
        f"stale: {sorted(present - wanted)}; missing: {sorted(wanted - present)}"
    )


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_generated_code_is_wrapped_without_changing_its_meaning(path: Path, monkeypatch) -> None:
    """No line of code over WIDTH (the module docstring quotes the spec as written),
    and the wrapped module parses to the same tree as the unwrapped one."""
    from recc.backends.triton import scan_codegen
    from recc.backends.triton.wrap import WIDTH

    wrapped = _kernel_source(path)
    if wrapped is None:
        return
    monkeypatch.setattr(scan_codegen, "wrap_source", lambda text: text)
    raw = _kernel_source(path)
    assert ast.dump(ast.parse(raw)) == ast.dump(ast.parse(wrapped))
    docstring = ast.get_docstring(ast.parse(wrapped)) or ""
    quoted = {line.strip() for line in docstring.splitlines()}
    long = [line for line in wrapped.splitlines() if len(line) > WIDTH]
    assert all(line.strip() in quoted for line in long), long[:3]


@pytest.mark.parametrize("stem", BUILT)
def test_built_modules_are_wrapped_without_changing_their_meaning(stem: str, monkeypatch) -> None:
    from recc.backends.triton import build, scan_codegen
    from recc.backends.triton.wrap import WIDTH

    rec, analysis = _load(ROOT / "specs" / f"{stem}.rec")
    wrapped = build_module(plan(rec, analysis))
    monkeypatch.setattr(scan_codegen, "wrap_source", lambda text: text)
    monkeypatch.setattr(build, "wrap_source", lambda text: text)
    raw = build_module(plan(rec, analysis))
    assert ast.dump(ast.parse(raw)) == ast.dump(ast.parse(wrapped))
    quoted = {line.strip() for line in rec.source.splitlines()}
    long = [line for line in wrapped.splitlines() if len(line) > WIDTH]
    assert all(line.strip().removeprefix('SPEC = """') in quoted for line in long), long[:3]


@pytest.mark.parametrize(
    "line",
    [
        "    x = (aaaa + bbbb) * " + " + ".join(f"term_{i}" for i in range(20)),
        "    y = f(" + ", ".join(f'"a, b # {i}"' for i in range(12)) + ")  # a comment, too",
        "    z = tl.where(" + " & ".join(f"m_{i}" for i in range(30)) + ", (a + b), 0.0)",
        "    (" + ", ".join(f"n{i}" for i in range(30)) + ",) = g((1, 2), 3)",
        "    # " + "a comment " * 20,
    ],
)
def test_a_wrapped_line_means_what_it_meant(line: str) -> None:
    from recc.backends.triton.wrap import WIDTH, wrap_line

    lines = wrap_line(line)
    assert all(len(x) <= WIDTH for x in lines), lines
    if not line.strip().startswith("#"):
        source = "def f():\n" + "\n".join(lines) + "\n"
        assert ast.dump(ast.parse(source)) == ast.dump(ast.parse("def f():\n" + line + "\n"))


_LEAVES = st.sampled_from([Ref((), name, "slot") for name in ("a", "b", "c", "d")])
_TREES = st.recursive(
    _LEAVES,
    lambda inner: (
        st.builds(
            lambda op, x, y: Apply((), op, (x, y)),
            st.sampled_from(["add", "sub", "mul", "div", "max"]),
            inner,
            inner,
        )
        | st.builds(lambda x, y: Apply((), "select", (Apply((), "gt", (x, y)), y, x)), inner, inner)
        | st.builds(lambda x: Apply((), "silu", (x,)), inner)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(_TREES)
def test_inline_leaves_out_only_brackets_that_change_nothing(expr) -> None:
    """The combines and applies print without redundant brackets (a product in a sum,
    a left operand of the same operator): the same parse tree, so the same rounding."""
    from recc.backends.triton import tile

    names = {n: n for n in "abcd"}
    short = tile.inline(expr, names)
    original = tile._needs_no_brackets
    try:
        tile._needs_no_brackets = lambda *args: False
        full = tile.inline(expr, names)
    finally:
        tile._needs_no_brackets = original
    assert ast.dump(ast.parse(short)) == ast.dump(ast.parse(full))
