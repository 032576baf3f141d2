"""The Triton scan as a torch.autograd.Function.

Stage: backend (triton), runtime side. Forward: the generated forward kernel,
which also stores the state entering every time block (checkpoints: one
state per BLOCK_T steps, never the whole state sequence). Backward: the
generated backward kernel, which recomputes each block's states from its
checkpoint, runs the adjoint scan and differentiates the gates in-kernel.
The Function is `runtime.ScanFunction`, the one `recc build` modules carry.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from recc.backends.triton.runtime import Program, ScanFunction, split_results
from recc.interpreter import last_step
from recc.ir.nodes import Recurrence
from recc.lowering import ScanPlan
from recc.signature import bind


def _bind_leaves(spec: Recurrence, tensors, initial_state):
    return bind(spec, tensors, initial_state, check_nan=False)


def program(spec: Recurrence, kernel: Any) -> Program:
    """The runtime's Program for a ScanKernel of `spec` (made once per kernel)."""
    found = getattr(kernel, "_program", None)
    if found is None:
        found = Program(kernel.launcher, functools.partial(_bind_leaves, spec))
        kernel._program = found
    return found


def triton_scan(
    facts: ScanPlan,
    kernel: Any,
    tensors: dict[str, torch.Tensor],
    initial_state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs and final states through the Triton kernels, differentiable.

    A state nothing reads gets its final from its update at the last step, in
    torch (`recc.interpreter.last_step`); the kernels leave it out."""
    rec = facts.spec
    names = tuple(tensors) + tuple(initial_state)
    leaves = [*tensors.values(), *initial_state.values()]
    results = ScanFunction.apply(program(rec, kernel), names, len(tensors), *leaves)
    outputs, finals = split_results(kernel.data, results)
    if kernel.unread:  # their updates read no state (ScanKernel checks)
        bound = bind(rec, tensors, initial_state, check_nan=False)
        finals.update(last_step(rec, bound, kernel.unread, {}))
    return {o.name: outputs[o.name] for o in rec.outputs}, {
        s.name: finals[s.name] for s in rec.states
    }
