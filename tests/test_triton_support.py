"""Triton support code: the interpreter's fast scan and ahead-of-time compile reports.

The kernels (tests/helpers/triton_kernels.py) run under the CPU interpreter, with the
interpreter's own element-by-element scan and with the vectorised one from
recc.testing.triton_interpreter; both must match a torch loop and each other. The same kernels are
compiled ahead of time for sm_80 and sm_90 (no GPU needed) and must not spill.

TRITON_INTERPRET=1 has to be in the environment before the first ``import triton`` of the
process (Triton decorates its own library, e.g. ``tl.sum``, at import), so it is set here before
any import that could pull Triton in. If something imported Triton earlier without it, the
interpreter tests are skipped with that reason; the compile tests run either way
(`compile_report` compiles in a child process when this one is in interpreter mode).
"""

from __future__ import annotations

import os
import sys

if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402

import recc.testing.triton_interpreter as ti  # noqa: E402
from recc.backends.triton.aot import (  # noqa: E402
    CompileJob,
    KernelCompileError,
    compile_report,
    compile_reports,
    max_shared_memory,
)
from tests.helpers import triton_kernels as kernels  # noqa: E402

BLOCK_T, BLOCK_D = 32, 16
D = 20  # two channel blocks, the second one partly masked
LENGTHS = [1, 17, 64, 100]  # one partial tile, one exact multiple, several tiles
TIGHT = dict(rtol=1e-6, atol=1e-6)  # fast scan vs the interpreter's own scan, fp32
VS_TORCH = dict(rtol=1e-5, atol=1e-5)  # either scan vs a sequential torch loop, fp32

needs_interpreter = pytest.mark.skipif(
    not ti.interpreter_active(),
    reason="triton was imported before TRITON_INTERPRET=1 could be set; set it for the "
    "whole test process (e.g. in tests/conftest.py) to run the interpreter tests",
)


@pytest.fixture(scope="module", autouse=True)
def _private_triton_cache(tmp_path_factory):
    """A fresh Triton cache for this module, so no run reuses another's kernels."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_CACHE_DIR", str(tmp_path_factory.mktemp("triton-cache")))
        yield


@pytest.fixture(autouse=True)
def _interpreter_scan_restored():
    """Every test starts and ends with the interpreter's own scan."""
    ti.uninstall_fast_scan()
    yield
    ti.uninstall_fast_scan()


# --- references ----------------------------------------------------------------------------


def _order(T: int, reverse: bool):
    return range(T - 1, -1, -1) if reverse else range(T)


def affine_reference(a, b, h0, reverse):
    out, h = torch.empty_like(a), h0.clone()
    for t in _order(a.shape[0], reverse):
        h = a[t] * h + b[t]
        out[t] = h
    return out


def clamp_reference(a, b, h0, reverse):
    out, h = torch.empty_like(a), h0.clone()
    for t in _order(a.shape[0], reverse):
        h = torch.maximum(torch.minimum(a[t], h), b[t])
        out[t] = h
    return out


def matrix_reference(m, v, h0):
    out, h = torch.empty_like(v), h0.clone()
    for t in range(m.shape[0]):
        h = torch.einsum("dij,dj->di", m[t], h) + v[t]
        out[t] = h
    return out


# --- launching -----------------------------------------------------------------------------

GRID = (triton.cdiv(D, BLOCK_D),)
CASES = ["affine", "affine_reverse", "clamp", "clamp_reverse", "matrix"]


def make_inputs(case: str, T: int):
    if case == "matrix":
        m = torch.rand(T, D, 2, 2) - 0.5  # entries in [-0.5, 0.5): |M| <= 1, no blow-up
        return m, torch.randn(T, D, 2), torch.randn(D, 2)
    if case.startswith("clamp"):
        lo = torch.randn(T, D)
        return lo + torch.rand(T, D) * 2, lo, torch.randn(D)
    return torch.rand(T, D) * 2 - 1, torch.randn(T, D), torch.randn(D)


def launch(case: str, inputs, *, fast: bool) -> torch.Tensor:
    x, y, h0 = inputs
    T = x.shape[0]
    out = torch.empty_like(y)
    with ti.fast_scan(fast):
        if case == "matrix":
            kernels.matrix_scan_kernel[GRID](x, y, h0, out, T, D, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D)
        else:
            kernel = kernels.affine_scan_kernel if case.startswith("affine") else None
            kernel = kernel or kernels.clamp_scan_kernel
            kernel[GRID](
                x, y, h0, out, T, D,
                REVERSE=case.endswith("reverse"), BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D,
            )  # fmt: skip
    return out


def reference(case: str, inputs) -> torch.Tensor:
    reverse = case.endswith("reverse")
    if case == "matrix":
        return matrix_reference(*inputs)
    if case.startswith("clamp"):
        return clamp_reference(*inputs, reverse)
    return affine_reference(*inputs, reverse)


# --- interpreter: fast scan ----------------------------------------------------------------


@needs_interpreter
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("case", CASES)
def test_recurrence_kernels_with_both_scans(case, T):
    inputs = make_inputs(case, T)
    slow = launch(case, inputs, fast=False)
    fast = launch(case, inputs, fast=True)
    expected = reference(case, inputs)
    if case.startswith("clamp"):  # min/max are exact, whatever the bracketing
        torch.testing.assert_close(slow, expected, rtol=0, atol=0)
        torch.testing.assert_close(fast, slow, rtol=0, atol=0)
    else:
        torch.testing.assert_close(slow, expected, **VS_TORCH)
        torch.testing.assert_close(fast, expected, **VS_TORCH)
        torch.testing.assert_close(fast, slow, **TIGHT)


TILES = [(1, 8), (8, 1), (16, 4), (4, 32)]


def _scan_tile(kernel, inputs, outputs, shape, axis, reverse, fast):
    with ti.fast_scan(fast):
        kernel[(1,)](*inputs, *outputs, M=shape[0], N=shape[1], AXIS=axis, REVERSE=reverse)
    return [o.clone() for o in outputs]


@needs_interpreter
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", TILES)
def test_fast_scan_matches_interpreter_scan_on_tiles(shape, axis, reverse):
    # Tuple of two float operands, non-commutative combine.
    a, b = torch.rand(shape) + 0.5, torch.randn(shape)
    outs = (torch.empty(shape), torch.empty(shape))
    slow = _scan_tile(kernels.tile_affine_scan_kernel, (a, b), outs, shape, axis, reverse, False)
    fast = _scan_tile(kernels.tile_affine_scan_kernel, (a, b), outs, shape, axis, reverse, True)
    for s, f in zip(slow, fast):
        torch.testing.assert_close(f, s, **TIGHT)
    expected = affine_reference(
        a.movedim(axis, 0), b.movedim(axis, 0), torch.zeros(a.movedim(axis, 0).shape[1:]), reverse
    ).movedim(0, axis)
    torch.testing.assert_close(fast[1], expected, **VS_TORCH)

    # Mixed float / int32 operands with ties: the earlier index must win, dtypes are kept.
    x = torch.randint(0, 3, shape).float()
    outs = (torch.empty(shape), torch.empty(shape, dtype=torch.int32))
    slow = _scan_tile(kernels.tile_argmax_scan_kernel, (x,), outs, shape, axis, reverse, False)
    fast = _scan_tile(kernels.tile_argmax_scan_kernel, (x,), outs, shape, axis, reverse, True)
    assert fast[1].dtype == torch.int32
    for s, f in zip(slow, fast):
        assert torch.equal(f, s)

    # A single (non-tuple) operand; pick-first makes any argument-order mistake visible.
    x = torch.randn(shape)
    outs = (torch.empty(shape),)
    slow = _scan_tile(kernels.tile_first_scan_kernel, (x,), outs, shape, axis, reverse, False)
    fast = _scan_tile(kernels.tile_first_scan_kernel, (x,), outs, shape, axis, reverse, True)
    assert torch.equal(fast[0], slow[0])
    edge = x.select(axis, -1 if reverse else 0).unsqueeze(axis)
    assert torch.equal(fast[0], edge.expand(shape))


@needs_interpreter
def test_fast_scan_install_and_restore():
    original = triton.runtime.interpreter.ScanOps.generic_scan
    with ti.fast_scan():
        assert ti.fast_scan_installed()
        with ti.fast_scan(False):
            assert not ti.fast_scan_installed()
        assert ti.fast_scan_installed()
    assert triton.runtime.interpreter.ScanOps.generic_scan is original
    ti.install_fast_scan()
    ti.install_fast_scan()
    ti.uninstall_fast_scan()
    assert triton.runtime.interpreter.ScanOps.generic_scan is original


@needs_interpreter
def test_fast_scan_speedup():
    timings = {}
    for case, T in [("affine", 100), ("matrix", 100)]:
        inputs = make_inputs(case, T)
        for fast in (False, True):
            start = time.perf_counter()
            launch(case, inputs, fast=fast)
            timings[case, fast] = time.perf_counter() - start
        print(
            f"\n[fast scan] {case} T={T} D={D} tile {BLOCK_T}x{BLOCK_D}: interpreter scan "
            f"{timings[case, False] * 1e3:.0f} ms, fast scan {timings[case, True] * 1e3:.0f} ms, "
            f"speedup x{timings[case, False] / timings[case, True]:.1f}"
        )


# --- ahead-of-time compilation -------------------------------------------------------------

RECURRENCE_SIGNATURE = {"H0": "*fp32", "H": "*fp32", "T": "i32", "D": "i32"}
BLOCKS = {"BLOCK_T": BLOCK_T, "BLOCK_D": BLOCK_D}


def recurrence_jobs(arch: int) -> list[CompileJob]:
    scalar = {"A": "*fp32", "B": "*fp32", **RECURRENCE_SIGNATURE}
    jobs = [
        CompileJob(kernel, scalar, {"REVERSE": reverse, **BLOCKS}, arch, enable_fp_fusion=True)
        for kernel in (kernels.affine_scan_kernel, kernels.clamp_scan_kernel)
        for reverse in (False, True)
    ]
    matrix = {"M": "*fp32", "V": "*fp32", **RECURRENCE_SIGNATURE}
    jobs.append(CompileJob(kernels.matrix_scan_kernel, matrix, BLOCKS, arch, enable_fp_fusion=True))
    return jobs


def cuobjdump_registers(cubin: bytes) -> dict[str, int]:
    """Registers per function according to ``cuobjdump -res-usage`` (an independent check)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "kernel.cubin")
        path.write_bytes(cubin)
        tool = triton.knobs.nvidia.cuobjdump.path
        text = subprocess.run(
            [tool, "-res-usage", str(path)], check=True, capture_output=True, text=True
        ).stdout
    return {
        m.group(1): int(m.group(2)) for m in re.finditer(r"Function (\S+):\s*\n\s*REG:(\d+)", text)
    }


@pytest.mark.parametrize("arch", [80, 90])
def test_recurrence_kernels_compile_without_spills(arch):
    start = time.perf_counter()
    reports = compile_reports(recurrence_jobs(arch))
    elapsed = time.perf_counter() - start
    print(f"\n[aot sm_{arch}] {len(reports)} kernels in {elapsed:.1f} s")
    for report in reports:
        print("  " + report.summary())
        assert report.arch == arch
        assert report.registers > 0
        assert report.spill_store_bytes == 0 and report.spill_load_bytes == 0
        assert not report.spills
        assert report.stack_frame_bytes == 0
        assert report.max_shared_mem == max_shared_memory(arch)
        assert 0 < report.shared_mem_bytes <= report.max_shared_mem  # the scans use smem
        assert report.num_warps == 4 and report.threads == 128
        assert report.ptx_bytes > 0 and report.cubin_bytes == len(report.cubin) > 0
        assert f".target sm_{arch}" in report.ptx
        assert cuobjdump_registers(report.cubin)[report.name] == report.registers


def test_compile_report_options_reach_the_compiler():
    job = dict(
        kernel=kernels.affine_scan_kernel,
        signature={"A": "*fp32", "B": "*fp32", **RECURRENCE_SIGNATURE},
        constexprs={"REVERSE": False, **BLOCKS},
        arch=80,
        num_stages=2,
        enable_fp_fusion=True,
    )
    four, eight = compile_reports([CompileJob(num_warps=4, **job), CompileJob(num_warps=8, **job)])
    assert (four.num_warps, eight.num_warps) == (4, 8)
    assert four.num_stages == eight.num_stages == 2
    assert four.ptx != eight.ptx


@pytest.mark.parametrize(
    "kernel, factor, triton_says",
    [
        (kernels.early_exit_kernel, 4.0, "unsupported AST node type: Break"),
        (kernels.python_call_kernel, 2.0, "Unsupported function referenced"),
    ],
)
def test_invalid_kernel_is_a_clear_compile_error(kernel, factor, triton_says):
    if ti.interpreter_active():  # the interpreter happily runs it...
        x, y = torch.randn(8), torch.empty(8)
        kernel[(1,)](x, y, N=8)
        torch.testing.assert_close(y, factor * x)
    with pytest.raises(KernelCompileError) as info:  # ...the compiler does not
        compile_report(kernel, {"X": "*fp32", "Y": "*fp32"}, {"N": 8}, arch=80)
    message = str(info.value)
    print(f"\n[aot error] {message.splitlines()[0]} ...")
    assert f"kernel {kernel.__name__!r} for sm_80" in message
    assert triton_says in message
    assert info.value.kernel_name == kernel.__name__ and info.value.arch == 80


def test_bad_arguments_fail_before_compiling():
    signature = {"X": "*fp32", "Y": "*fp32"}
    with pytest.raises(ValueError, match=r"no signature type or constexpr value for \['N'\]"):
        compile_report(kernels.early_exit_kernel, signature)
    with pytest.raises(ValueError, match="has no argument"):
        compile_report(kernels.early_exit_kernel, {**signature, "Z": "i32"}, {"N": 8})
    with pytest.raises(ValueError, match="sm_42"):
        compile_report(kernels.early_exit_kernel, signature, {"N": 8}, arch=42)
    with pytest.raises(TypeError, match="@triton.jit"):
        compile_report(affine_reference, signature, {"N": 8})


def test_max_shared_memory_limits():
    assert max_shared_memory(80) == 163 * 1024 == 166912
    assert max_shared_memory(90) == 227 * 1024 == 232448
    assert max_shared_memory(86) == 99 * 1024
