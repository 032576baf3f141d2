"""The interpreter as a backend: the reference loop, one step after another.

Stage: backend. Runs every plan on any device (`recc.interpreter` defines the
semantics every other backend is checked against); the fallback of
`backend="auto"` for the algorithms no faster backend runs yet.
"""

from __future__ import annotations

import torch

from recc import interpreter
from recc.backends.protocol import Call, Options
from recc.lowering import LoweringPlan


class InterpreterBackend:
    name = "interpreter"
    summary = "the reference loop, one step after another, any device"
    builds = True  # a module with the loop printed as torch, for the classes Triton lacks

    def supports(
        self, plan: LoweringPlan, device: torch.device | None = None, auto: bool = False
    ) -> str | None:
        return None

    def prepare(self, plan: LoweringPlan, options: Options):
        spec = plan.spec

        def run(call: Call):
            return interpreter.run(spec, call.bound)

        return run

    def build(self, plan: LoweringPlan) -> str:
        """The `recc build` module without Triton kernels: the step printed as torch,
        looped over time (`recc.backends.triton.build`, `kernels=False`)."""
        from recc.backends.triton.build import build_module

        return build_module(plan, kernels=False)

    def takes_packed(self, plan: LoweringPlan) -> bool:
        return False

    def notes(self, plan: LoweringPlan) -> list[str]:
        return []

    def details(self, plan: LoweringPlan) -> list[str]:
        return []


INTERPRETER = InterpreterBackend()
