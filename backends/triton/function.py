"""The Triton scan as a torch.autograd.Function.

Stage: backend (triton), runtime side. Forward: the generated Triton kernel
(`launch.ScanKernel`). Backward: for now the gradient is recomputed by the
torch backend's chunked scan under autograd from the saved inputs (exact,
but not the generated Triton backward kernel, which is the next step); the
forward saves only its inputs, never the state sequence.
"""

from __future__ import annotations

from typing import Any

import torch

from recc.analysis.forms import Analysis
from recc.backends.torch.scan import run_scan
from recc.ir.nodes import Recurrence
from recc.signature import bind


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run: Any, names: tuple[str, ...], n_tensors: int, *leaves: torch.Tensor):
        rec, analysis, kernel = run
        tensors = dict(zip(names[:n_tensors], leaves[:n_tensors]))
        init = dict(zip(names[n_tensors:], leaves[n_tensors:]))
        bound = bind(rec, tensors, init, check_nan=False)
        outputs, finals = kernel(bound, output_final_state=True)
        ctx.save_for_backward(*leaves)
        ctx.run, ctx.names, ctx.n_tensors = run, names, n_tensors
        results = [outputs[o.name] for o in rec.outputs] + [finals[s.name] for s in rec.states]
        return tuple(results)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        rec, analysis, _ = ctx.run
        leaves = [x.detach().requires_grad_(x.requires_grad) for x in ctx.saved_tensors]
        names, n = ctx.names, ctx.n_tensors
        with torch.enable_grad():
            bound = bind(
                rec,
                dict(zip(names[:n], leaves[:n])),
                dict(zip(names[n:], leaves[n:])),
                check_nan=False,
            )
            outputs, finals = run_scan(rec, analysis, bound)
            results = [outputs[o.name] for o in rec.outputs] + [finals[s.name] for s in rec.states]
            wanted = [x for x in leaves if x.requires_grad]
            pairs = [(r, g) for r, g in zip(results, grads) if g is not None and r.requires_grad]
            found = (
                torch.autograd.grad(
                    [r for r, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True
                )
                if pairs and wanted
                else [None] * len(wanted)
            )
        it = iter(found)
        leaf_grads = [next(it) if x.requires_grad else None for x in leaves]
        return (None, None, None, *leaf_grads)


def triton_scan(
    rec: Recurrence,
    analysis: Analysis,
    kernel: Any,
    tensors: dict[str, torch.Tensor],
    initial_state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs and final states through the Triton kernel, differentiable."""
    names = tuple(tensors) + tuple(initial_state)
    leaves = [*tensors.values(), *initial_state.values()]
    results = _TritonScan.apply((rec, analysis, kernel), names, len(tensors), *leaves)
    n_out = len(rec.outputs)
    outputs = {o.name: r for o, r in zip(rec.outputs, results[:n_out])}
    finals = {s.name: r for s, r in zip(rec.states, results[n_out:])}
    return outputs, finals
