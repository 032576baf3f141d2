"""Ahead-of-time compile reports for Triton kernels, with no GPU present.

`compile_report` compiles one ``@triton.jit`` kernel for an NVIDIA target (``sm_80``,
``sm_90``, ...) through Triton's own pipeline (``triton.compile`` on an ``ASTSource`` with an
explicit ``GPUTarget``) and returns a `KernelReport`: registers per thread, spill bytes, stack
frame, shared memory, and the sizes of the PTX and cubin. `compile_reports` does the same for
several kernels at once.

Where the numbers come from
---------------------------
* Registers, spill stores/loads and stack frame come from the ``ptxas -v`` report of the very
  ``ptxas`` run that produced the cubin. Triton always runs ``ptxas`` with ``-v`` and prints that
  report when the ``knobs.nvidia.dump_ptxas_log`` knob (``TRITON_DUMP_PTXAS_LOG``) is on; we turn
  the knob on for the call and capture the print. This route was chosen because:

  - ``CompiledKernel.n_regs`` / ``n_spills`` are filled only when the cubin is loaded onto a
    device (``driver.active.utils.load_binary``), so they are unavailable without a GPU;
  - ``cuobjdump -res-usage`` on the cubin gives registers and stack/local sizes but not the
    spill store/load bytes;
  - re-running ``ptxas`` ourselves would have to copy Triton's flag choices (``-lineinfo``,
    ``--fmad``, ``--regAllocOptLevel``, ``sm_90a`` vs ``sm_90``, which ``ptxas`` binary), and
    could silently drift from what a real launch gets.

  The log only exists when ``ptxas`` actually runs, so every compile goes into a private,
  temporary cache directory with ``always_compile`` on: a report is never read from a stale
  cache entry. The tests cross-check the register count against ``cuobjdump -res-usage``.
* Shared memory is Triton's own allocation (``metadata.shared``: the dynamic shared memory a
  launch requests), compared with the documented per-block opt-in limit of the architecture
  (`max_shared_memory`). Triton itself checks this limit only when loading onto a device.

Interpreter processes
---------------------
A process whose first ``import triton`` happened with ``TRITON_INTERPRET=1`` cannot compile at
all: Triton's own library functions (``tl.cdiv``, ``tl.sum``, ...) were then decorated as
interpreter functions, and kernels in it are ``InterpretedFunction`` objects. In that case (or
whenever the kernel is an ``InterpretedFunction``) the compile runs in a child Python process
with the interpreter off, which re-imports the kernel's module from its file; the kernel must
then be defined at module level, and constexpr values must be picklable. Otherwise it runs in
this process.

Global state touched during an in-process compile (all restored afterwards): the Triton knobs
``runtime.interpret`` (forced off), ``nvidia.dump_ptxas_log``, ``compilation.always_compile``
and ``cache.dir``; and ``sys.stdout`` is redirected to capture the log, so do not compile from
several threads at once.

Every failure of the Triton pipeline is raised as `KernelCompileError`, whose message names the
kernel and target and carries Triton's own message; bad arguments (unknown names, missing
types) raise ``ValueError``/``TypeError`` before anything is compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import io
import os
import pickle
import re
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

__all__ = [
    "CompileJob",
    "KernelCompileError",
    "KernelReport",
    "compile_report",
    "compile_reports",
    "max_shared_memory",
]

# Maximum shared memory per thread block, with the opt-in (cudaFuncSetAttribute /
# cuFuncSetAttribute MaxDynamicSharedMemorySize) that Triton always uses, in bytes.
# Source: NVIDIA CUDA C++ Programming Guide, "Features and Technical Specifications",
# table "Technical Specifications per Compute Capability", row "Maximum amount of shared
# memory per thread block": 7.0: 96 KB, 7.5: 64 KB, 8.0: 163 KB, 8.6: 99 KB, 8.7: 163 KB,
# 8.9: 99 KB, 9.0: 227 KB, 10.0: 227 KB, 12.0: 99 KB (KB = 1024 bytes). These are the values a
# device reports as cudaDevAttrMaxSharedMemoryPerBlockOptin (166912 on an A100, 232448 on an
# H100), which is what Triton compares `metadata.shared` against when it loads a kernel.
_MAX_SHARED_MEMORY_KIB = {
    70: 96,
    75: 64,
    80: 163,
    86: 99,
    87: 163,
    89: 99,
    90: 227,
    100: 227,
    120: 99,
}

_WARP_SIZE = 32
_WORKER_TIMEOUT_S = 600
# The child process loads this file by path rather than as `recc.backends.triton.aot`, so that it
# does not import the `recc` package (and torch, sympy, ...) just to compile.
_WORKER_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_recc_triton_aot_worker', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "module._worker(sys.argv[2], sys.argv[3])\n"
)


def max_shared_memory(arch: int) -> int:
    """Per-block shared memory limit in bytes (opt-in) for compute capability ``arch``.

    ``arch`` is written as Triton writes it: 80 for sm_80, 90 for sm_90.
    """
    try:
        return _MAX_SHARED_MEMORY_KIB[arch] * 1024
    except KeyError:
        known = ", ".join(f"sm_{a}" for a in sorted(_MAX_SHARED_MEMORY_KIB))
        raise ValueError(f"no shared-memory limit recorded for sm_{arch}; known: {known}") from None


class KernelCompileError(RuntimeError):
    """Triton could not compile a kernel ahead of time (or its ptxas report was unreadable)."""

    def __init__(self, kernel_name: str, arch: int, message: str) -> None:
        self.kernel_name = kernel_name
        self.arch = arch
        self.message = message
        super().__init__(
            f"Triton failed to compile kernel {kernel_name!r} for sm_{arch}: {message}"
        )

    def __reduce__(self):
        return (type(self), (self.kernel_name, self.arch, self.message))


@dataclass(frozen=True)
class KernelReport:
    """Resource usage of one kernel compiled for one target. Sizes are in bytes."""

    name: str
    arch: int
    registers: int  # per thread, as allocated by ptxas
    spill_store_bytes: int
    spill_load_bytes: int
    stack_frame_bytes: int
    shared_mem_bytes: int  # dynamic shared memory Triton requests at launch
    max_shared_mem: int  # `max_shared_memory(arch)`
    num_warps: int
    num_stages: int
    ptx_bytes: int
    cubin_bytes: int
    ptxas_log: str = field(default="", repr=False, compare=False)
    ptx: str = field(default="", repr=False, compare=False)
    cubin: bytes = field(default=b"", repr=False, compare=False)

    @property
    def spills(self) -> bool:
        return self.spill_store_bytes > 0 or self.spill_load_bytes > 0

    @property
    def fits_shared_memory(self) -> bool:
        return self.shared_mem_bytes <= self.max_shared_mem

    @property
    def threads(self) -> int:
        return self.num_warps * _WARP_SIZE

    def summary(self) -> str:
        return (
            f"{self.name} sm_{self.arch} warps={self.num_warps} stages={self.num_stages}: "
            f"{self.registers} regs, spill {self.spill_store_bytes}B st / "
            f"{self.spill_load_bytes}B ld, stack {self.stack_frame_bytes}B, "
            f"smem {self.shared_mem_bytes}/{self.max_shared_mem}B, "
            f"ptx {self.ptx_bytes}B, cubin {self.cubin_bytes}B"
        )


@dataclass(frozen=True)
class CompileJob:
    """The arguments of one `compile_report` call, for `compile_reports`."""

    kernel: Any
    signature: Mapping[str, str]
    constexprs: Mapping[str, object] | None = None
    arch: int = 90
    num_warps: int = 4
    num_stages: int = 3
    aligned: Iterable[str] | None = None
    enable_fp_fusion: bool | None = None


def compile_report(
    kernel: Any,
    signature: Mapping[str, str],
    constexprs: Mapping[str, object] | None = None,
    arch: int = 90,
    num_warps: int = 4,
    num_stages: int = 3,
    *,
    aligned: Iterable[str] | None = None,
    enable_fp_fusion: bool | None = None,
) -> KernelReport:
    """Compile ``kernel`` for ``sm_<arch>`` and report its resource usage.

    ``signature`` maps each runtime argument name to a Triton type string (``"*fp32"``,
    ``"i32"``, ``"fp32"``, ...); ``constexprs`` maps each ``tl.constexpr`` argument name to its
    value (those need no entry in ``signature``). ``aligned`` names the arguments that a launch
    would specialise as divisible by 16 (Triton does this for 16-byte aligned pointers, which
    every torch allocation is); by default every pointer argument. ``enable_fp_fusion`` left as
    None takes Triton's default, as a launch would. ``num_stages=3`` is Triton's default.
    """
    job = CompileJob(
        kernel, signature, constexprs, arch, num_warps, num_stages, aligned, enable_fp_fusion
    )
    return compile_reports([job])[0]


def compile_reports(jobs: Iterable[CompileJob]) -> list[KernelReport]:
    """`compile_report` for each job, in order; out-of-process jobs share one child process.

    Raises the `KernelCompileError` of the first job that fails.
    """
    prepared = [_prepare(job) for job in jobs]
    if not prepared:
        return []
    if all(_can_compile_here(job.kernel) for job in prepared):
        return [_compile_here(job) for job in prepared]
    return _compile_in_child(prepared)


# --- argument checking ---------------------------------------------------------------------


def _kernel_name(kernel: Any) -> str:
    return getattr(kernel, "__name__", type(kernel).__name__)


def _prepare(job: CompileJob) -> CompileJob:
    """Validate ``job`` and complete its signature, in argument order."""
    kernel = job.kernel
    if not isinstance(kernel, JITFunction) and not _is_interpreted_function(kernel):
        raise TypeError(f"compile_report needs a @triton.jit kernel, got {_kernel_name(kernel)!r}")
    max_shared_memory(job.arch)  # unknown architectures fail here, before compiling
    constexprs = dict(job.constexprs or {})
    signature = _full_signature(kernel, dict(job.signature), constexprs)
    if job.aligned is None:
        aligned = tuple(k for k, ty in signature.items() if ty.startswith("*"))
    else:
        aligned = tuple(job.aligned)
    for arg in aligned:
        if signature.get(arg, "constexpr") == "constexpr":
            name = _kernel_name(kernel)
            raise ValueError(f"kernel {name!r}: aligned argument {arg!r} is not a runtime argument")
    return dataclasses.replace(job, signature=signature, constexprs=constexprs, aligned=aligned)


def _full_signature(
    kernel: Any, signature: dict[str, str], constexprs: dict[str, object]
) -> dict[str, str]:
    """Signature in argument order, with ``"constexpr"`` filled in for the constexpr args."""
    name = _kernel_name(kernel)
    arg_names = list(kernel.arg_names)
    unknown = sorted((set(signature) | set(constexprs)) - set(arg_names))
    if unknown:
        raise ValueError(f"kernel {name!r} has no argument(s) {unknown}; it takes {arg_names}")
    full = {}
    missing = []
    for arg in arg_names:
        if arg in constexprs:
            if signature.get(arg, "constexpr") != "constexpr":
                raise ValueError(
                    f"kernel {name!r}: argument {arg!r} has a constexpr value and signature "
                    f"type {signature[arg]!r}"
                )
            full[arg] = "constexpr"
        elif arg in signature:
            full[arg] = signature[arg]
        else:
            missing.append(arg)
    if missing:
        raise ValueError(f"kernel {name!r}: no signature type or constexpr value for {missing}")
    return full


def _is_interpreted_function(kernel: Any) -> bool:
    return type(kernel).__name__ == "InterpretedFunction" and callable(getattr(kernel, "fn", None))


def _language_is_interpreted() -> bool:
    """True when triton.language was imported with TRITON_INTERPRET=1 (cannot compile then)."""
    import triton.language.standard as standard

    return not isinstance(standard.cdiv, JITFunction)


def _can_compile_here(kernel: Any) -> bool:
    return isinstance(kernel, JITFunction) and not _language_is_interpreted()


# --- compiling in this process -------------------------------------------------------------


def _compile_here(job: CompileJob) -> KernelReport:
    kernel, arch = job.kernel, job.arch
    name = kernel.__name__
    attrs = {(kernel.arg_names.index(arg),): [["tt.divisibility", 16]] for arg in job.aligned}
    options: dict[str, object] = {"num_warps": job.num_warps, "num_stages": job.num_stages}
    if job.enable_fp_fusion is not None:
        options["enable_fp_fusion"] = job.enable_fp_fusion

    log = io.StringIO()
    with _isolated_compile(log):
        try:
            source = ASTSource(
                fn=kernel, signature=dict(job.signature), constexprs=job.constexprs, attrs=attrs
            )
            target = GPUTarget("cuda", arch, _WARP_SIZE)
            compiled = triton.compile(source, target=target, options=options)
        except Exception as exc:  # every pipeline failure becomes one clear error type
            raise KernelCompileError(name, arch, _triton_message(exc)) from exc
    ptxas_log = log.getvalue()
    entry = compiled.metadata.name
    usage = _parse_ptxas_log(ptxas_log, entry)
    if usage is None:
        raise KernelCompileError(
            name,
            arch,
            f"could not find the ptxas -v report for entry {entry!r} in the captured log:\n"
            f"{ptxas_log or '<empty>'}",
        )
    registers, stack, spill_stores, spill_loads = usage
    ptx = compiled.asm.get("ptx", "")
    ptx = ptx if isinstance(ptx, str) else ptx.decode()
    cubin = bytes(compiled.asm.get("cubin", b""))
    return KernelReport(
        name=name,
        arch=arch,
        registers=registers,
        spill_store_bytes=spill_stores,
        spill_load_bytes=spill_loads,
        stack_frame_bytes=stack,
        shared_mem_bytes=int(compiled.metadata.shared or 0),
        max_shared_mem=max_shared_memory(arch),
        num_warps=int(compiled.metadata.num_warps),
        num_stages=int(compiled.metadata.num_stages),
        ptx_bytes=len(ptx.encode()),
        cubin_bytes=len(cubin),
        ptxas_log=ptxas_log,
        ptx=ptx,
        cubin=cubin,
    )


@contextlib.contextmanager
def _isolated_compile(log: io.StringIO):
    """Fresh private cache, interpreter off, ptxas log printed into ``log``."""
    with contextlib.ExitStack() as stack:
        for group in (knobs.runtime, knobs.nvidia, knobs.compilation, knobs.cache):
            stack.enter_context(group.scope())
        cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="recc-triton-aot-"))
        knobs.runtime.interpret = False
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True
        knobs.cache.dir = cache_dir
        stack.enter_context(contextlib.redirect_stdout(log))
        yield


def _triton_message(exc: BaseException) -> str:
    """The messages of ``exc`` and of the errors chained under it, outermost first."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        label = type(current).__name__
        parts.append(f"{label}: {text}" if text else label)
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


_FUNCTION_PROPERTIES = re.compile(r"Function properties for (\S+)")
_STACK_AND_SPILLS = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_REGISTERS = re.compile(r"Used (\d+) registers")


def _parse_ptxas_log(log: str, entry: str) -> tuple[int, int, int, int] | None:
    """``(registers, stack_frame, spill_stores, spill_loads)`` for function ``entry``.

    ptxas -v writes, per function::

        ptxas info    : Function properties for <name>
            <s> bytes stack frame, <st> bytes spill stores, <ld> bytes spill loads
        ptxas info    : Used <r> registers, ...
    """
    lines = log.splitlines()
    for i, line in enumerate(lines):
        match = _FUNCTION_PROPERTIES.search(line)
        if match is None or match.group(1) != entry:
            continue
        stack = spills = registers = None
        for follow in lines[i + 1 :]:
            if _FUNCTION_PROPERTIES.search(follow):
                break
            if spills is None and (m := _STACK_AND_SPILLS.search(follow)):
                stack, spills = int(m.group(1)), (int(m.group(2)), int(m.group(3)))
            if registers is None and (m := _REGISTERS.search(follow)):
                registers = int(m.group(1))
                break
        if registers is None or spills is None or stack is None:
            return None
        return registers, stack, spills[0], spills[1]
    return None


# --- compiling in a child process ----------------------------------------------------------


def _locate(kernel: Any) -> dict[str, str]:
    """Where a child process can re-import ``kernel`` from: module name, file, qualified name."""
    fn = kernel.fn
    name = _kernel_name(kernel)
    qualname = getattr(fn, "__qualname__", name)
    if "<locals>" in qualname:
        raise ValueError(
            f"kernel {name!r} is defined inside a function; only module-level kernels can be "
            "compiled while this process runs the Triton interpreter"
        )
    path = inspect.getsourcefile(fn)
    if path is None:
        raise ValueError(f"kernel {name!r}: cannot find its source file")
    return {"module": fn.__module__, "path": str(Path(path).resolve()), "qualname": qualname}


def _compile_in_child(jobs: Sequence[CompileJob]) -> list[KernelReport]:
    requests = [
        {
            "where": _locate(job.kernel),
            "signature": dict(job.signature),
            "constexprs": dict(job.constexprs),
            "arch": job.arch,
            "num_warps": job.num_warps,
            "num_stages": job.num_stages,
            "aligned": list(job.aligned),
            "enable_fp_fusion": job.enable_fp_fusion,
        }
        for job in jobs
    ]
    env = dict(os.environ)
    env["TRITON_INTERPRET"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    with tempfile.TemporaryDirectory(prefix="recc-triton-aot-job-") as tmp:
        request_path, response_path = Path(tmp, "request.pkl"), Path(tmp, "response.pkl")
        request_path.write_bytes(pickle.dumps(requests))
        proc = subprocess.run(
            [sys.executable, "-c", _WORKER_BOOT, __file__, str(request_path), str(response_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=_WORKER_TIMEOUT_S,
        )
        if proc.returncode != 0 or not response_path.exists():
            raise RuntimeError(
                f"the ahead-of-time compile worker failed (exit {proc.returncode}):\n"
                f"{proc.stderr[-4000:]}"
            )
        responses = pickle.loads(response_path.read_bytes())
    reports = []
    for job, (status, payload) in zip(jobs, responses):
        if status == "report":
            reports.append(KernelReport(**payload))
        elif status == "compile_error":
            raise KernelCompileError(*payload)
        else:
            raise RuntimeError(
                f"the ahead-of-time compile worker failed on kernel {_kernel_name(job.kernel)!r}:\n"
                f"{payload}"
            )
    return reports


def _load_kernel(where: Mapping[str, str]) -> Any:
    module = None
    name = where["module"]
    if name and name != "__main__":
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # e.g. a generated module outside any package
            spec = None
        origin = spec.origin if spec is not None else None
        if origin is not None and Path(origin).resolve() == Path(where["path"]):
            module = importlib.import_module(name)
    if module is None:
        private = f"_recc_aot_{Path(where['path']).stem}"
        spec = importlib.util.spec_from_file_location(private, where["path"])
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {where['path']}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[private] = module
        spec.loader.exec_module(module)
    obj: Any = module
    for part in where["qualname"].split("."):
        obj = getattr(obj, part)
    return obj


def _worker(request_path: str, response_path: str) -> None:
    requests = pickle.loads(Path(request_path).read_bytes())
    responses = []
    for request in requests:
        try:
            kernel = _load_kernel(request["where"])
            job = CompileJob(
                kernel=kernel,
                signature=request["signature"],
                constexprs=request["constexprs"],
                arch=request["arch"],
                num_warps=request["num_warps"],
                num_stages=request["num_stages"],
                aligned=request["aligned"],
                enable_fp_fusion=request["enable_fp_fusion"],
            )
            report = _compile_here(_prepare(job))
            fields = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
            responses.append(("report", fields))
        except KernelCompileError as exc:
            responses.append(("compile_error", (exc.kernel_name, exc.arch, exc.message)))
        except Exception:
            responses.append(("error", traceback.format_exc()))
    Path(response_path).write_bytes(pickle.dumps(responses))
