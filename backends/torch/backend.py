"""The torch backend's adapter to the registry (`recc.backends.protocol`).

Stage: backend (torch). Runs the chunked scan (`scan.py`) on any device,
eagerly or under torch.compile (`compiled.py`, imported only when asked for),
the chunkwise algorithm for matrix states (`chunkwise.py`), and for nonlinear
specs the step loop (`sequential.py`) or the Newton solver (`newton.py`), by a
cost rule per call.
"""

from __future__ import annotations

import torch

from recc.backends.protocol import Call, Options
from recc.backends.sequences import per_sequence
from recc.backends.torch.chunkwise import run_chunkwise
from recc.backends.torch.scan import run_scan
from recc.lowering import CHUNKWISE, NEWTON, SEQUENTIAL, LoweringPlan

# A matrix state with both a scan and a chunkwise form (GLA, RetNet, Mamba2, unless
# `strategy=` keeps one): the scan for sequences shorter than this, chunkwise from it.
# Measured by `python benchmarks/chunkwise.py --crossover` (docs/lowering-chunkwise.md).
CHUNKWISE_FROM_T = 64


class TorchBackend:
    name = "torch"
    summary = (
        "the chunked scan, the chunkwise algorithm for matrix states, the step loop "
        "with its state-free work hoisted, or the Newton solver, in torch; any device "
        "(torch_compile=True fuses the scan, or the loop's step)"
    )
    builds = False

    def supports(
        self, plan: LoweringPlan, device: torch.device | None = None, auto: bool = False
    ) -> str | None:
        if plan.algorithm in (SEQUENTIAL, NEWTON):
            return None
        if plan.algorithm == CHUNKWISE:
            if plan.chunk is None:
                return f"the chunkwise algorithm cannot take this spec: {plan.no_chunk_plan}"
            return None
        if plan.scan is None:
            return f"no torch lowering of the {plan.algorithm} algorithm yet ({plan.kind} class)"
        return None

    def prepare(self, plan: LoweringPlan, options: Options):
        chunk, scan = plan.chunk, plan.scan
        if plan.sequential is not None:
            from recc.backends.torch.sequential import SequentialLoop

            loop = SequentialLoop(plan.sequential, compiled=options.torch_compile)
            if plan.newton is None:
                return lambda call: loop(call.bound)
            from recc.backends.torch.newton import NewtonOrLoop, NewtonSolver

            return NewtonOrLoop(NewtonSolver(plan.newton, loop), plan.strategy == NEWTON)
        if scan is None:
            assert chunk is not None, plan.algorithm
            return lambda call: run_chunkwise(chunk, call.bound)
        if options.torch_compile:
            from recc.backends.torch.compiled import CompiledScan

            compiled = CompiledScan(scan)
            run_scan_form = lambda call: compiled(call.bound)  # noqa: E731
        else:
            run_scan_form = lambda call: run_scan(scan, call.bound)  # noqa: E731
        if chunk is None:
            return run_scan_form

        def run(call: Call):  # both forms: the cost rule picks by the call's length
            if call.bound.T >= CHUNKWISE_FROM_T:
                return run_chunkwise(chunk, call.bound)
            if call.bound.cu_seqlens is not None:  # the scan takes one sequence a call
                return per_sequence(run_scan_form, call)
            return run_scan_form(call)

        return run

    def stepper(self, plan: LoweringPlan):
        """One step at a time, for decoding (`decode.py`): any plan, any device."""
        from recc.backends.torch.decode import Stepper

        return Stepper(plan)

    def takes_packed(self, plan: LoweringPlan) -> bool:
        """The chunkwise algorithm packs sequences (chunks never straddle two); the
        scan alone does not."""
        return plan.chunk is not None

    def build(self, plan: LoweringPlan) -> str:
        raise NotImplementedError("the torch backend writes no module")

    def details(self, plan: LoweringPlan) -> list[str]:
        return []

    def notes(self, plan: LoweringPlan) -> list[str]:
        if plan.newton is not None:
            from recc.backends.torch.newton import cost_rule

            assert plan.sequential is not None
            return [
                cost_rule(plan.newton, plan.strategy == NEWTON),
                f"Newton: {plan.newton.describe()}",
                f"the step loop: {plan.sequential.describe()}",
            ]
        if plan.sequential is not None:
            return [f"the step loop: {plan.sequential.describe()}"]
        if plan.chunk is not None and plan.scan is not None:
            return [
                f"T >= {CHUNKWISE_FROM_T}: the chunkwise algorithm (matmuls over chunks of "
                f"{plan.chunk.chunk} steps); shorter sequences and decoding: the scan",
            ]
        if plan.scan is not None and plan.no_chunk_plan:  # a matrix state without one
            return [f"the scan at every T; no chunkwise form: {plan.no_chunk_plan}"]
        return []


TORCH = TorchBackend()
