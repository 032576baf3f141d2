"""The backends, in order of preference: what api, check, explain and the CLI iterate.

Stage: after lowering. `backend="auto"` runs the first backend that accepts the
call's tensors. Nothing outside a backend's own package imports its modules;
this file imports only their small adapters (`recc.backends.<name>.backend`),
which import their heavy parts (triton, inductor) on first use.
"""

from __future__ import annotations

import torch

from recc.backends.interpreter import INTERPRETER
from recc.backends.protocol import Backend
from recc.backends.torch.backend import TORCH
from recc.backends.triton.backend import TRITON
from recc.lowering import LoweringPlan

REGISTRY: tuple[Backend, ...] = (TRITON, TORCH, INTERPRETER)
NAMES: tuple[str, ...] = tuple(b.name for b in REGISTRY)
# The executor every other one is checked against (`recc check`, the tests).
REFERENCE: Backend = INTERPRETER


def backend_named(name: str) -> Backend:
    for backend in REGISTRY:
        if backend.name == name:
            return backend
    raise KeyError(name)


def first_accepting(plan: LoweringPlan, device: torch.device) -> Backend:
    """What `backend="auto"` runs on `device`'s tensors: the first that accepts."""
    for backend in REGISTRY:
        if backend.supports(plan, device, auto=True) is None:
            return backend
    raise AssertionError("the interpreter accepts every plan")  # pragma: no cover


def verdicts(plan: LoweringPlan) -> list[tuple[Backend, str | None]]:
    """Each backend with None (it runs this plan) or its reason, in registry order."""
    return [(b, b.supports(plan)) for b in REGISTRY]
