"""What a backend is: the one protocol every executor implements.

Stage: after lowering. A backend says whether it takes a plan (`supports`:
None, or the reason it does not, in words a user can act on), prepares an
executor for it (`prepare`), and may write a standalone module (`build`).
`recc.backends.registry` lists the backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from recc.lowering import LoweringPlan
from recc.signature import Bound


@dataclass(frozen=True)
class Call:
    """One call of a compiled recurrence: its tensors bound and checked
    (`bound`, in the compute dtype), and the caller's own tensors (`tensors`:
    inputs and params by name; `initial_state`: states by name), which an
    executor with its own autograd Function takes as its leaves."""

    bound: Bound
    tensors: dict[str, torch.Tensor]
    initial_state: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Options:
    """What a user may ask of the executors; a backend reads what applies to it."""

    torch_compile: bool = False  # the torch backend runs its scan under torch.compile


class Executor(Protocol):
    def __call__(self, call: Call) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(outputs, final states) by name, differentiable."""
        ...


class Backend(Protocol):
    name: str  # what `backend=` and `--backend` take
    summary: str  # one line for `recc explain`: what it runs, where
    builds: bool  # whether `build` writes a module (`recc build`)

    def supports(
        self, plan: LoweringPlan, device: torch.device | None = None, auto: bool = False
    ) -> str | None:
        """None if this backend runs `plan` (on `device`'s tensors, when given), else
        why not. `auto`: asked for `backend="auto"`, which a backend may decline where
        it would run only when asked for by name (Triton's CPU interpreter)."""
        ...

    def prepare(self, plan: LoweringPlan, options: Options) -> Executor:
        """An executor for a plan `supports` accepted (device aside)."""
        ...

    def build(self, plan: LoweringPlan) -> str:
        """The source of a standalone module for `plan` (only if `builds`)."""
        ...

    def takes_packed(self, plan: LoweringPlan) -> bool:
        """Whether its executor runs a packed call (`bound.cu_seqlens`) itself; if not,
        the caller runs it once per sequence (`recc.backends.sequences`)."""
        ...

    def notes(self, plan: LoweringPlan) -> list[str]:
        """Lines `recc explain` always prints under an accepting backend: how it runs
        the plan where it has a choice (cheap: no compiling)."""
        ...

    def details(self, plan: LoweringPlan) -> list[str]:
        """Extra lines for `recc explain --registers` (e.g. the kernels' registers)."""
        ...
