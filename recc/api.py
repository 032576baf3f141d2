"""`recc.compile`: a spec in, a callable recurrence out.

Stage: top level. Parses and analyses once; each call binds and checks its
tensors (`recc.signature`) and runs the chosen executor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from recc import interpreter
from recc.analysis import Analysis, analyze
from recc.analysis.classify import linear_states
from recc.backends.torch import run_scan
from recc.errors import RecError
from recc.ir import Recurrence, load
from recc.lowering import LoweringPlan, plan
from recc.lowering.plan import ALL_BACKENDS, INTERPRETER, TORCH, TRITON
from recc.report import explain
from recc.signature import bind, initial_states

BACKENDS = ("auto", *ALL_BACKENDS)


class CompiledRecurrence:
    """A compiled spec. Call it with the spec's inputs and params by name:

        y = fn(k=k, v=v)                                   # one output
        y, final = fn(k=k, v=v, output_final_state=True)  # and the last state
        y = fn(k=k, v=v, initial_state=h0)                 # start from h0

    Inputs are `[B, T, *dims]` or `[B, T, H, *dims]`; params their declared
    shape (or `[H, *shape]`); states `[B, (H), *dims]`. Several outputs come
    back as a tuple in declaration order, several states likewise.

    NaN in any tensor is a RecError unless `check_nan=False` (then it
    propagates like in any torch op); inf is allowed (MinMax starts at -inf).
    """

    def __init__(self, spec: Recurrence, backend: str, torch_compile: bool = False) -> None:
        self.spec = spec
        self.analysis: Analysis = analyze(spec)
        self.plan: LoweringPlan = plan(spec, self.analysis)
        if backend != "auto" and backend not in self.plan.backends:
            raise RecError(
                f"backend '{backend}' has no lowering for '{spec.name}' "
                f"({self.analysis.kind} class) yet",
                hint=f"use backend='auto' or one of: {', '.join(self.plan.backends)}",
            )
        if torch_compile and TORCH not in self.plan.backends:
            raise RecError(
                f"torch_compile=True needs the torch backend, which has no lowering for "
                f"'{spec.name}' ({self.analysis.kind} class) yet",
                hint="leave torch_compile off for this spec",
            )
        self.backend = backend
        self._compiled_scan: Any = None
        if torch_compile:
            from recc.backends.torch.compiled import CompiledScan

            self._compiled_scan = CompiledScan(spec, self.analysis)
        self._triton: Any = None  # the generated kernel, built on first use
        self.triton_unsupported: str | None = None

    def backend_for(self, device: torch.device) -> str:
        """The executor a call on `device` runs on."""
        if self.backend != "auto":
            return self.backend
        if TRITON in self.plan.backends and device.type == "cuda" and self.triton_kernel():
            return TRITON
        return next(b for b in self.plan.backends if b != TRITON)

    def triton_kernel(self) -> Any:
        """The generated Triton scan kernel, or None (see `triton_unsupported`)."""
        if self._triton is None and self.triton_unsupported is None:
            from recc.backends.triton.launch import ScanKernel
            from recc.backends.triton.scan_codegen import Unsupported

            try:
                self._triton = ScanKernel(self.spec, self.analysis)
            except Unsupported as err:
                self.triton_unsupported = str(err)
        return self._triton

    def __call__(
        self,
        *args: Any,
        initial_state: Any = None,
        output_final_state: bool = False,
        check_nan: bool = True,
        **tensors: Any,
    ) -> Any:
        if args:
            example = ", ".join(f"{i.name}=..." for i in self.spec.inputs)
            raise RecError(f"pass tensors by name, e.g. fn({example})")
        for flag, value in (("output_final_state", output_final_state), ("check_nan", check_nan)):
            if not isinstance(value, bool):
                raise RecError(
                    f"{flag} must be True or False, got {value!r}",
                    hint=f"pass {flag}=True or {flag}=False",
                )
        finite = linear_states(self.analysis.form)
        bound = bind(self.spec, tensors, initial_state, check_nan, finite_states=finite)
        backend = self.backend_for(bound.device)
        if backend == TRITON:
            outputs, finals = self._run_triton(bound, tensors, initial_state)
        elif backend == TORCH and self._compiled_scan is not None:
            outputs, finals = self._compiled_scan(bound)
        elif backend == TORCH:
            outputs, finals = run_scan(self.spec, self.analysis, bound)
        else:
            assert backend == INTERPRETER
            outputs, finals = interpreter.run(self.spec, bound)
        out = tuple(outputs[o.name] for o in self.spec.outputs)
        result: Any = out[0] if len(out) == 1 else out
        if not output_final_state:
            return result
        states = tuple(finals[s.name] for s in self.spec.states)
        return result, (states[0] if len(states) == 1 else states)

    def _run_triton(self, bound, tensors, initial_state):
        if not _triton_can_run(bound.device):
            raise RecError(
                f"backend 'triton' needs CUDA tensors; these are on {bound.device}",
                hint="move the tensors to a GPU, use backend='torch', or set "
                "TRITON_INTERPRET=1 (before importing triton) for Triton's CPU interpreter",
            )
        kernel = self.triton_kernel()
        if kernel is None:
            raise RecError(
                f"'{self.spec.name}' has no Triton kernel: {self.triton_unsupported}",
                hint="use backend='torch' (or 'auto', which falls back to it)",
            )
        from recc.backends.triton.function import triton_scan

        return triton_scan(
            self.spec, self.analysis, kernel, tensors, initial_states(self.spec, initial_state)
        )

    def explain(self) -> str:
        return explain(self.spec, self.analysis, self.plan)

    def __repr__(self) -> str:
        return f"<recc {self.spec.name}: {self.analysis.kind}, backend={self.backend}>"


def _triton_can_run(device: torch.device) -> bool:
    interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return device.type == "cuda" or (interpreted and device.type == "cpu")


def compile(  # noqa: A001
    path_or_source: str | Path, backend: str = "auto", torch_compile: bool = False
) -> CompiledRecurrence:
    """Compile a `.rec` file (path) or spec text.

    `backend`: "auto" (per call, the fastest executor for the spec's class and
    the tensors' device: "triton" on CUDA for diagonal and MinMax specs,
    "torch" elsewhere, "interpreter" for the classes without a lowering yet),
    "triton" (generated kernels; CUDA, or CPU under TRITON_INTERPRET=1),
    "torch" (the chunked scan, any device) or "interpreter" (the reference).

    `torch_compile=True` runs the torch backend's scan under `torch.compile`
    (inductor): its few hundred small ops fuse into a few loops (on this
    project's 2-core CPU 1.5-1.7x faster forward, ~2x forward+backward; see
    docs/scan-lowering.md), after a compile of seconds to tens of seconds on
    the first call with each new input shape (and again on the first backward).
    """
    if backend not in BACKENDS:
        raise RecError(f"unknown backend '{backend}'", hint=f"choose one of: {', '.join(BACKENDS)}")
    if not isinstance(torch_compile, bool):
        raise RecError(f"torch_compile must be True or False, got {torch_compile!r}")
    return CompiledRecurrence(load(path_or_source), backend, torch_compile)


__all__ = ["CompiledRecurrence", "compile"]
