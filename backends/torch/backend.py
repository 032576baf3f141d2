"""The torch backend's adapter to the registry (`recc.backends.protocol`).

Stage: backend (torch). Runs the chunked scan (`scan.py`) on any device,
eagerly or under torch.compile (`compiled.py`, imported only when asked for),
and the chunkwise algorithm for matrix states (`chunkwise.py`).
"""

from __future__ import annotations

import torch

from recc.backends.protocol import Call, Options
from recc.backends.torch.chunkwise import run_chunkwise
from recc.backends.torch.scan import run_scan
from recc.lowering import CHUNKWISE, LoweringPlan


class TorchBackend:
    name = "torch"
    summary = (
        "the chunked scan, or the chunkwise algorithm for matrix states, in torch; "
        "any device (torch_compile=True fuses the scan)"
    )
    builds = False

    def supports(
        self, plan: LoweringPlan, device: torch.device | None = None, auto: bool = False
    ) -> str | None:
        if plan.algorithm == CHUNKWISE:
            if plan.chunk is None:
                return f"the chunkwise algorithm cannot take this spec: {plan.no_chunk_plan}"
            return None
        if plan.scan is None:
            return f"no torch lowering of the {plan.algorithm} algorithm yet ({plan.kind} class)"
        return None

    def prepare(self, plan: LoweringPlan, options: Options):
        if plan.chunk is not None:
            chunk = plan.chunk
            return lambda call: run_chunkwise(chunk, call.bound)
        scan = plan.scan
        assert scan is not None, plan.algorithm
        if options.torch_compile:
            from recc.backends.torch.compiled import CompiledScan

            compiled = CompiledScan(scan)
            return lambda call: compiled(call.bound)

        def run(call: Call):
            return run_scan(scan, call.bound)

        return run

    def build(self, plan: LoweringPlan) -> str:
        raise NotImplementedError("the torch backend writes no module")

    def details(self, plan: LoweringPlan) -> list[str]:
        return []


TORCH = TorchBackend()
