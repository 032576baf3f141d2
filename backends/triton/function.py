"""The Triton scan as a torch.autograd.Function.

Stage: backend (triton), runtime side. Forward: the generated forward kernel,
which also stores the state entering every time block (checkpoints: one
state per BLOCK_T steps, never the whole state sequence). Backward: the
generated backward kernel, which recomputes each block's states from its
checkpoint, runs the adjoint scan and differentiates the gates in-kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from recc.analysis.forms import Analysis
from recc.interpreter import last_step
from recc.ir.nodes import Recurrence
from recc.signature import bind


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run: Any, names: tuple[str, ...], n_tensors: int, *leaves: torch.Tensor):
        spec, kernel = run  # the kernel computes kernel.rec: the spec less its unread states
        rec = kernel.rec
        tensors = dict(zip(names[:n_tensors], leaves[:n_tensors]))
        init = dict(zip(names[n_tensors:], leaves[n_tensors:]))
        bound = bind(spec, tensors, init, check_nan=False)
        grad = any(ctx.needs_input_grad[3:])
        outputs, finals, ckpts = kernel.forward(bound, output_final_state=True, checkpoints=grad)
        ctx.save_for_backward(*leaves, *ckpts.values())
        ctx.run, ctx.names, ctx.n_tensors, ctx.n_leaves = run, names, n_tensors, len(leaves)
        results = [outputs[o.name] for o in rec.outputs] + [finals[s.name] for s in rec.states]
        return tuple(results)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        spec, kernel = ctx.run
        rec = kernel.rec
        saved = ctx.saved_tensors
        leaves, ckpt_list = saved[: ctx.n_leaves], saved[ctx.n_leaves :]
        names, n = ctx.names, ctx.n_tensors
        bound = bind(
            spec,
            dict(zip(names[:n], leaves[:n])),
            dict(zip(names[n:], leaves[n:])),
            check_nan=False,
        )
        ckpts = dict(zip([s.name for s in rec.states], ckpt_list))
        n_out = len(rec.outputs)
        d_out = {o.name: g for o, g in zip(rec.outputs, grads[:n_out])}
        d_fin = {s.name: g for s, g in zip(rec.states, grads[n_out:])}
        d_tensors, d_init = kernel.backward(bound, ckpts, d_out, d_fin)
        leaf_grads = []
        for i, (name, leaf) in enumerate(zip(names, leaves)):
            if not ctx.needs_input_grad[3 + i]:
                leaf_grads.append(None)
                continue
            g = d_tensors.get(name) if i < n else d_init.get(name)
            leaf_grads.append(None if g is None else g.to(leaf.dtype))
        return (None, None, None, *leaf_grads)


def triton_scan(
    rec: Recurrence,
    analysis: Analysis,
    kernel: Any,
    tensors: dict[str, torch.Tensor],
    initial_state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs and final states through the Triton kernels, differentiable.

    A state nothing reads gets its final from its update at the last step, in
    torch (`recc.interpreter.last_step`); the kernels leave it out."""
    del analysis  # the kernel was generated from it
    names = tuple(tensors) + tuple(initial_state)
    leaves = [*tensors.values(), *initial_state.values()]
    results = _TritonScan.apply((rec, kernel), names, len(tensors), *leaves)
    n_out = len(rec.outputs)
    outputs = {o.name: r for o, r in zip(rec.outputs, results[:n_out])}
    finals = {s.name: r for s, r in zip(kernel.rec.states, results[n_out:])}
    if kernel.unread:  # their updates read no state (ScanKernel checks)
        bound = bind(rec, tensors, initial_state, check_nan=False)
        finals.update(last_step(rec, bound, kernel.unread, {}))
    return {o.name: outputs[o.name] for o in rec.outputs}, {
        s.name: finals[s.name] for s in rec.states
    }
