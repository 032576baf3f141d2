"""The Triton backend's adapter to the registry (`recc.backends.protocol`).

Stage: backend (triton). Generated scan kernels, forward and backward, on CUDA
tensors (or CPU tensors under TRITON_INTERPRET=1, Triton's interpreter: for
tests, never picked by `backend="auto"`). Importing this file imports neither
Triton nor the code generator; `supports` generates the kernels the first time
it is asked about a plan (their generator is the judge of what it can print)
and keeps them for `prepare`.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from recc.backends.protocol import Call, Options
from recc.backends.triton.runtime import interpreted
from recc.lowering import SCAN, LoweringPlan

_NO_DEVICE = (
    "needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before triton is "
    "imported: Triton's interpreter, for testing)"
)


class TritonBackend:
    name = "triton"
    summary = "generated Triton scan kernels, forward and backward, CUDA tensors"
    builds = True

    def __init__(self) -> None:
        # plan -> the ScanKernel, or the reason there is none (plans compare by identity)
        self._kernels: weakref.WeakKeyDictionary[LoweringPlan, Any] = weakref.WeakKeyDictionary()

    def supports(
        self, plan: LoweringPlan, device: torch.device | None = None, auto: bool = False
    ) -> str | None:
        if plan.algorithm != SCAN:
            return f"no Triton kernel for the {plan.algorithm} algorithm yet ({plan.kind} class)"
        if device is not None:
            if device.type == "cpu" and auto:
                return "CPU tensors: the torch backend is faster than Triton's interpreter"
            if device.type != "cuda" and not (device.type == "cpu" and interpreted()):
                return f"{_NO_DEVICE}; these are on {device}"
        kernel = self._kernel(plan)
        return kernel if isinstance(kernel, str) else None

    def _kernel(self, plan: LoweringPlan) -> Any:
        """The plan's ScanKernel, or the generator's reason it has none."""
        if plan not in self._kernels:
            from recc.backends.triton.launch import ScanKernel
            from recc.backends.triton.scan_codegen import Unsupported

            try:
                self._kernels[plan] = ScanKernel(plan.scan)
            except Unsupported as err:
                self._kernels[plan] = f"no kernel: {err}"
        return self._kernels[plan]

    def prepare(self, plan: LoweringPlan, options: Options):
        from recc.backends.triton.function import triton_scan

        kernel = self._kernel(plan)
        assert not isinstance(kernel, str), kernel
        facts = plan.scan

        def run(call: Call):
            return triton_scan(facts, kernel, call.tensors, call.initial_state)

        return run

    def build(self, plan: LoweringPlan) -> str:
        from recc.backends.triton.build import build_module

        return build_module(plan)

    def takes_packed(self, plan: LoweringPlan) -> bool:
        return False

    def notes(self, plan: LoweringPlan) -> list[str]:
        return []

    def details(self, plan: LoweringPlan, arch: int = 90) -> list[str]:
        """Registers and spills of the generated kernels, compiled ahead of time."""
        kernel = self._kernel(plan)
        if isinstance(kernel, str):
            return []
        from recc.backends.triton.aot import compile_reports
        from recc.backends.triton.launch import compile_jobs

        reports = compile_reports(compile_jobs(kernel, arch))
        names = ("forward", "forward + checkpoints", "backward")
        lines = [f"Triton kernels, sm_{arch}, default tiles (compiled ahead of time):"]
        for name, r in zip(names, reports):
            lines.append(
                f"  {name:22} {r.registers:3d} registers/thread, spills "
                f"{r.spill_store_bytes}+{r.spill_load_bytes} B, shared {r.shared_mem_bytes} B"
            )
        return lines


TRITON = TritonBackend()
