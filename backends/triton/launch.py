"""Load a spec's generated Triton module and launch its kernels.

Stage: backend (triton), runtime side. The module source is written once to
the kernel cache (`recc.backends.triton.cache`) and imported from there
(Triton reads a kernel's source from its file). The launcher turns a bound
call (`recc.signature.Bound`) into pointers, strides and a grid, allocates
outputs, checkpoints and gradients, and sums per-channel-block partial
gradients.
"""

from __future__ import annotations

import inspect

import torch

from recc.analysis.forms import Analysis
from recc.backends.triton.cache import load_module
from recc.backends.triton.scan_codegen import (
    ScanKernelPlan,
    TensorArg,
    generate_scan_module,
    kernel_spec,
)
from recc.backends.triton.tile import TIME
from recc.ir.nodes import Recurrence
from recc.signature import Bound

# Elements of one [BLOCK_T, ...] tile. Chosen so the generated kernels compile
# without register spills (tests/test_triton_scan.py checks sm_80 and sm_90):
# the forward alone, and training (the forward that checkpoints, whose time
# blocks the backward must share, and the backward, which holds ~3x the tiles).
INFERENCE_BUDGET = 1024
TRAINING_BUDGET = 256
MAX_BLOCK_T = 64


def _pow2(n: int) -> int:
    return 1 << max(0, (max(n, 1) - 1).bit_length())


def block_sizes(
    plan: ScanKernelPlan, sizes: dict[str, int], budget: int = INFERENCE_BUDGET
) -> dict[str, int]:
    """Whole dims padded to a power of two; the split dim and time fill the budget."""
    blocks = {d: _pow2(sizes[d]) for d in plan.layout.dims if d != plan.blocked}
    whole = 1
    for v in blocks.values():
        whole *= v
    if plan.blocked is not None:
        blocks[plan.blocked] = min(_pow2(sizes[plan.blocked]), max(1, budget // 4 // whole))
        whole *= blocks[plan.blocked]
    blocks[TIME] = max(1, min(MAX_BLOCK_T, _pow2(budget // whole + 1) // 2))
    return blocks


def _strides(arg: TensorArg, x: torch.Tensor, present: set[str]) -> list[int]:
    """One stride per axis of `arg`; an axis the tensor lacks (no heads) gets 0."""
    out, i = [], 0
    for axis in arg.axes:
        if axis in present:
            out.append(x.stride(i))
            i += 1
        else:
            out.append(0)
    return out + list(x.stride()[x.dim() - len(arg.dims) :])


class ScanKernel:
    """A spec's generated forward and backward scan kernels, ready to launch."""

    def __init__(self, rec: Recurrence, analysis: Analysis, module=None) -> None:
        """`module`: an already imported module with these kernels (a `recc build`
        output); by default they are generated and loaded from the kernel cache."""
        self.spec = rec
        self.rec, analysis, self.unread = kernel_spec(rec, analysis)
        self.source, self.plan = generate_scan_module(self.rec, analysis)
        self.module = module or load_module(self.source, stem=f"{rec.name}_scan")
        self.forward_kernel = getattr(self.module, self.plan.forward)
        self.backward_kernel = getattr(self.module, self.plan.backward)

    def _grid(self, bound: Bound, training: bool):
        budget = TRAINING_BUDGET if training else INFERENCE_BUDGET
        blocks = block_sizes(self.plan, bound.sizes, budget)
        n_c = 1
        if self.plan.blocked is not None:
            n_c = -(-bound.sizes[self.plan.blocked] // blocks[self.plan.blocked])
        return blocks, n_c, (bound.B * (bound.H or 1), n_c)

    def _inputs_and_params(self, bound: Bound) -> dict[str, tuple[torch.Tensor, set[str]]]:
        """Every input and param with the launch axes it varies along (b, t, h)."""
        heads = set() if bound.H is None else {"h"}
        tensors: dict[str, tuple[torch.Tensor, set[str]]] = {}
        for name, _ in self.plan.inputs:
            tensors[("input", name)] = (bound.inputs[name], {"b", "t"} | heads)
        for name, dims in self.plan.params:
            p = bound.params[name]
            tensors[("param", name)] = (p, {"h"} if p.dim() > len(dims) else set())
        return tensors

    def _launch(self, kernel, args, tensors, bound: Bound, blocks, grid, **flags) -> None:
        import triton.language as tl

        pointers, strides = [], []
        for arg in args:
            x, present = tensors[arg.key]
            pointers.append(x)
            strides += _strides(arg, x, present)
        sizes = [bound.sizes[d] for d in self.plan.layout.dims]
        dtype = tl.float64 if bound.compute_dtype == torch.float64 else tl.float32
        kernel[grid](
            *pointers,
            bound.T,
            bound.H or 1,
            *sizes,
            *strides,
            **{self.plan.block_name(d): v for d, v in blocks.items()},
            **flags,
            DTYPE=dtype,
        )

    def forward(self, bound: Bound, output_final_state: bool = True, checkpoints: bool = False):
        """Outputs and final states; with `checkpoints`, also the states entering each
        time block (what the backward restarts from)."""
        plan, B, T = self.plan, bound.B, bound.T
        blocks, _, grid = self._grid(bound, training=checkpoints)
        heads = set() if bound.H is None else {"h"}
        step, batch = {"b", "t"} | heads, {"b"} | heads
        n_k = max(1, -(-T // blocks[TIME]))
        tensors = self._inputs_and_params(bound)
        outputs, finals, ckpts = {}, {}, {}
        for name, dims in plan.states:
            tensors[("init", name)] = (bound.initial_state[name], batch)
            shape = (B, *bound.batch_heads, *bound.shape_of(dims))
            finals[name] = torch.empty(shape, dtype=bound.compute_dtype, device=bound.device)
            tensors[("final", name)] = (finals[name], batch)
            # without checkpoints a 1-element stand-in (STORE_CKPT=False never touches it)
            ckpt_shape = (
                (B, bound.H or 1, n_k, *bound.shape_of(dims)) if checkpoints else (1,) * len(dims)
            )
            ckpts[name] = torch.empty(ckpt_shape, dtype=bound.compute_dtype, device=bound.device)
            tensors[("ckpt", name)] = (ckpts[name], {"b", "h", "k"} if checkpoints else set())
        for name, dims in plan.outputs:
            shape = (B, T, *bound.batch_heads, *bound.shape_of(dims))
            outputs[name] = torch.empty(shape, dtype=bound.out_dtype, device=bound.device)
            tensors[("out", name)] = (outputs[name], step)
        if T > 0:
            self._launch(
                self.forward_kernel,
                plan.forward_args,
                tensors,
                bound,
                blocks,
                grid,
                STORE_FINAL=output_final_state,
                STORE_CKPT=checkpoints,
            )
        else:
            finals = {k: v.clone() for k, v in bound.initial_state.items()}
        return outputs, finals, ckpts

    def __call__(self, bound: Bound, output_final_state: bool = True):
        outputs, finals, _ = self.forward(bound, output_final_state)
        return outputs, finals

    def backward(self, bound: Bound, ckpts, d_outputs, d_finals):
        """Gradients of inputs, params and initial states (dicts by name), given the
        cotangents of the outputs and final states (None for zero)."""
        plan, B, T = self.plan, bound.B, bound.T
        blocks, n_c, grid = self._grid(bound, training=True)
        heads = set() if bound.H is None else {"h"}
        step, batch = {"b", "t"} | heads, {"b"} | heads
        dev, dt = bound.device, bound.compute_dtype
        tensors = self._inputs_and_params(bound)
        for name, dims in plan.states:
            tensors[("ckpt", name)] = (ckpts[name], {"b", "h", "k"})
            shape = (B, *bound.batch_heads, *bound.shape_of(dims))
            d = d_finals.get(name)
            d = torch.zeros((), dtype=dt, device=dev).expand(shape) if d is None else d.to(dt)
            tensors[("dfinal", name)] = (d, batch)
        for name, dims in plan.outputs:
            shape = (B, T, *bound.batch_heads, *bound.shape_of(dims))
            d = d_outputs.get(name)
            d = torch.zeros((), dtype=dt, device=dev).expand(shape) if d is None else d
            tensors[("dout", name)] = (d, step)
        grads: dict[tuple[str, str], torch.Tensor] = {}
        for name, dims in plan.inputs:
            shape = (B, T, *bound.batch_heads, *bound.shape_of(dims))
            key = ("input_grad", name)
            if plan.partial(dims):
                grads[key] = torch.zeros((n_c, *shape), dtype=dt, device=dev)
                tensors[key] = (grads[key], {"c"} | step)
            else:
                grads[key] = torch.zeros(shape, dtype=dt, device=dev)
                tensors[key] = (grads[key], step)
        for name, dims in plan.params:
            shape = (B, bound.H or 1, n_c, *bound.shape_of(dims))
            key = ("param_grad", name)
            grads[key] = torch.zeros(shape, dtype=dt, device=dev)
            tensors[key] = (grads[key], {"b", "h", "c"})
        for name, dims in plan.states:
            shape = (B, *bound.batch_heads, *bound.shape_of(dims))
            key = ("dinit", name)
            if plan.partial(dims):
                grads[key] = torch.zeros((n_c, *shape), dtype=dt, device=dev)
                tensors[key] = (grads[key], {"c"} | batch)
            else:
                grads[key] = torch.zeros(shape, dtype=dt, device=dev)
                tensors[key] = (grads[key], batch)
        if T > 0:
            self._launch(self.backward_kernel, plan.backward_args, tensors, bound, blocks, grid)
        else:
            for name, _ in plan.states:
                d = d_finals.get(name)
                if d is not None:
                    grads[("dinit", name)] = d.to(dt)
        result = {}
        for name, dims in plan.inputs:
            g = grads[("input_grad", name)]
            result[name] = g.sum(0) if plan.partial(dims) else g
        for name, dims in plan.params:
            g = grads[("param_grad", name)].sum(dim=(0, 2))  # over batch, channel blocks
            result[name] = g if bound.params[name].dim() > len(dims) else g.sum(0)
        init = {}
        for name, dims in plan.states:
            g = grads[("dinit", name)]
            init[name] = g.sum(0) if plan.partial(dims) and T > 0 else g
        return result, init


# Shapes the ahead-of-time check compiles at: the default tile sizes for a
# typical layer (D = 256 channels; expanded and matrix states at N = 16, 64).
REPORT_SIZE = {"D": 256, "N": 16, "K": 64, "V": 64, "P": 64}


def compile_jobs(kernel: ScanKernel, arch: int, sizes: dict[str, int] | None = None):
    """`recc.backends.triton.aot.CompileJob`s at default tile sizes: the inference
    forward, the training forward (with checkpoints) and the backward."""
    import triton.language as tl

    from recc.backends.triton.aot import CompileJob

    plan = kernel.plan
    sizes = {d: (sizes or {}).get(d, REPORT_SIZE.get(d, 64)) for d in plan.layout.dims}
    jobs = []
    for fn, flags, budget in (
        (kernel.forward_kernel, {"STORE_FINAL": True, "STORE_CKPT": False}, INFERENCE_BUDGET),
        (kernel.forward_kernel, {"STORE_FINAL": True, "STORE_CKPT": True}, TRAINING_BUDGET),
        (kernel.backward_kernel, {}, TRAINING_BUDGET),
    ):
        blocks = block_sizes(plan, sizes, budget)
        signature: dict[str, str] = {}
        for name, param in inspect.signature(fn.fn).parameters.items():
            if "constexpr" not in str(param.annotation):
                signature[name] = "*fp32" if name.endswith("_ptr") else "i32"
        constexprs = {plan.block_name(d): v for d, v in blocks.items()}
        constexprs.update(flags)
        constexprs["DTYPE"] = tl.float32
        jobs.append(CompileJob(fn, signature, constexprs, arch=arch, enable_fp_fusion=True))
    return jobs
