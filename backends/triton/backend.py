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
from dataclasses import replace
from typing import Any

import torch

from recc.backends.protocol import Call, Options
from recc.backends.triton.runtime import interpreted
from recc.lowering import CHUNKWISE, NEWTON, SCAN, LoweringPlan

_NO_DEVICE = (
    "needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before triton is "
    "imported: Triton's interpreter, for testing)"
)


class TritonBackend:
    name = "triton"
    summary = (
        "generated Triton kernels, CUDA tensors: the scan (forward and backward), "
        "chunkwise (forward), Newton's linear scans (the loop in torch)"
    )
    builds = True

    def __init__(self) -> None:
        # plan -> the ScanKernel, or the reason there is none (plans compare by identity)
        self._kernels: weakref.WeakKeyDictionary[LoweringPlan, Any] = weakref.WeakKeyDictionary()

    def supports(
        self, plan: LoweringPlan, device: torch.device | None = None, auto: bool = False
    ) -> str | None:
        if plan.algorithm not in (SCAN, CHUNKWISE, NEWTON):
            return f"no Triton kernel for the {plan.algorithm} algorithm yet ({plan.kind} class)"
        if device is not None:
            if device.type == "cpu" and auto:
                return "CPU tensors: the torch backend is faster than Triton's interpreter"
            if device.type != "cuda" and not (device.type == "cpu" and interpreted()):
                return f"{_NO_DEVICE}; these are on {device}"
        kernel = self._kernel(plan)
        return kernel if isinstance(kernel, str) else None

    def _kernel(self, plan: LoweringPlan) -> Any:
        """The plan's ScanKernel (ChunkKernel for a chunkwise plan), or the generator's
        reason it has none."""
        if plan not in self._kernels and plan.algorithm == CHUNKWISE:
            from recc.backends.triton.chunk_codegen import Unsupported
            from recc.backends.triton.chunk_launch import ChunkKernel

            try:
                self._kernels[plan] = ChunkKernel(plan.chunk)
            except Unsupported as err:
                self._kernels[plan] = f"no chunkwise kernel: {err}"
        if plan not in self._kernels:
            from recc.backends.triton.launch import ScanKernel
            from recc.backends.triton.scan_codegen import Unsupported

            try:
                if plan.algorithm == NEWTON:  # its linearised step and its adjoint
                    assert plan.newton is not None
                    self._kernels[plan] = (
                        ScanKernel(plan.newton.scan),
                        ScanKernel(plan.newton.adjoint_scan),
                    )
                else:
                    self._kernels[plan] = ScanKernel(plan.scan)
            except Unsupported as err:
                self._kernels[plan] = f"no kernel: {err}"
        return self._kernels[plan]

    def prepare(self, plan: LoweringPlan, options: Options):
        from recc.backends.triton.function import triton_scan

        kernel = self._kernel(plan)
        assert not isinstance(kernel, str), kernel
        if plan.algorithm == CHUNKWISE:
            return _chunkwise_executor(plan, kernel)
        if plan.algorithm == NEWTON:
            return _newton_executor(plan, kernel, options)
        facts = plan.scan

        def run(call: Call):
            return triton_scan(facts, kernel, call.tensors, call.initial_state)

        return run

    def build(self, plan: LoweringPlan) -> str:
        """The `recc build` module; a Newton plan's is the step loop without kernels (a
        vendored Newton solver is not written yet)."""
        from recc.backends.triton.build import build_module

        return build_module(plan, kernels=plan.algorithm != NEWTON)

    def takes_packed(self, plan: LoweringPlan) -> bool:
        return False

    def notes(self, plan: LoweringPlan) -> list[str]:
        if plan.algorithm == NEWTON:
            from recc.backends.torch.newton import cost_rule

            assert plan.newton is not None
            return [
                cost_rule(plan.newton, plan.strategy == NEWTON),
                "each Newton iteration's linear recurrence (and the backward's adjoint) "
                "runs a generated scan kernel; the step, its Jacobian and the step loop "
                "run in torch (no fused sequential kernel yet)",
            ]
        if plan.algorithm == CHUNKWISE:
            return [
                "chunkwise kernels run the forward; a call that needs gradients runs the "
                "torch chunkwise path (the kernels' backward is not generated yet)"
            ]
        if plan.chunk is not None:
            return [
                "the scan kernel at every T; strategy='chunkwise' runs the chunkwise "
                "kernels (their rule by T awaits GPU timings)"
            ]
        return []

    def details(self, plan: LoweringPlan, arch: int = 90) -> list[str]:
        """Registers and spills of the generated kernels, compiled ahead of time."""
        kernel = self._kernel(plan)
        if isinstance(kernel, str):
            return []
        if plan.algorithm == CHUNKWISE:
            return _chunk_details(kernel, arch)
        from recc.backends.triton.aot import compile_reports
        from recc.backends.triton.launch import compile_jobs

        if plan.algorithm == NEWTON:  # the two linear scans' forwards: all Newton launches
            lines = [f"Triton kernels, sm_{arch}, default tiles (compiled ahead of time):"]
            for name, scan in zip(("Newton step scan", "adjoint scan"), kernel):
                r = compile_reports(compile_jobs(scan, arch)[:1])[0]
                lines.append(
                    f"  {name:22} {r.registers:3d} registers/thread, spills "
                    f"{r.spill_store_bytes}+{r.spill_load_bytes} B, shared {r.shared_mem_bytes} B"
                )
            return lines
        reports = compile_reports(compile_jobs(kernel, arch))
        names = ("forward", "forward + checkpoints", "backward")
        lines = [f"Triton kernels, sm_{arch}, default tiles (compiled ahead of time):"]
        for name, r in zip(names, reports):
            lines.append(
                f"  {name:22} {r.registers:3d} registers/thread, spills "
                f"{r.spill_store_bytes}+{r.spill_load_bytes} B, shared {r.shared_mem_bytes} B"
            )
        return lines


def _newton_executor(plan: LoweringPlan, kernels, options: Options):
    """The Newton solver with its linear recurrences on the generated scan kernels;
    the step's evaluation, the stop rule and the fallback loop are the torch backend's
    (`recc.backends.torch.newton`: backend-neutral torch ops, on CUDA tensors here)."""
    from recc.backends.torch.newton import NewtonOrLoop, NewtonSolver
    from recc.backends.torch.sequential import SequentialLoop

    assert plan.newton is not None and plan.sequential is not None
    by_plan = {id(plan.newton.scan): kernels[0], id(plan.newton.adjoint_scan): kernels[1]}

    def scan(facts, bound):
        contiguous = {k: v.contiguous() for k, v in bound.inputs.items()}
        starts = {k: v.contiguous() for k, v in bound.initial_state.items()}
        outputs, _ = by_plan[id(facts)](replace(bound, inputs=contiguous, initial_state=starts))
        return outputs

    loop = SequentialLoop(plan.sequential, compiled=options.torch_compile)
    return NewtonOrLoop(NewtonSolver(plan.newton, loop, scan=scan), plan.strategy == NEWTON)


def _chunkwise_executor(plan: LoweringPlan, kernel):
    """The chunkwise kernels for calls without gradients; the torch chunkwise path for
    calls that need them (its autograd), until the kernels' backward is generated."""
    from recc.backends.torch.chunkwise import run_chunkwise

    def run(call: Call):
        b = call.bound
        leaves = [*b.inputs.values(), *b.params.values(), *b.initial_state.values()]
        if torch.is_grad_enabled() and any(t.requires_grad for t in leaves):
            return run_chunkwise(plan.chunk, b)
        return kernel(b)

    return run


def _chunk_details(kernel, arch: int) -> list[str]:
    from recc.backends.triton.aot import compile_reports
    from recc.backends.triton.chunk_launch import compile_jobs, counts

    lines = [f"Triton chunkwise kernels, sm_{arch}, K = V = 64 tiles (compiled ahead of time):"]
    for r in compile_reports(compile_jobs(kernel, arch)):
        lines.append(
            f"  {r.name:22} {r.registers:3d} registers/thread, spills "
            f"{r.spill_store_bytes}+{r.spill_load_bytes} B, shared {r.shared_mem_bytes} B"
        )
    T = 4096
    c = counts(kernel, B=1, T=T, H=1, R=64, C=64)
    moved = (c.bytes_read + c.bytes_written) / T
    lines.append(
        f"  per token (T = {T}, rows = cols = 64, fp32): {moved:.0f} bytes of global "
        f"memory ({c.bytes_read / T:.0f} read), {c.dot_flops / T:.0f} dot FLOPs"
    )
    return lines


TRITON = TritonBackend()
