"""Load a generated Triton module and launch its scan kernel.

Stage: backend (triton), runtime side. The module source is written once to
the kernel cache (`recc.backends.triton.cache`) and imported from there
(Triton reads a kernel's source from its file). The launcher turns the bound
call (`recc.signature.Bound`) into pointers, strides and a grid.
"""

from __future__ import annotations

import torch

from recc.analysis.forms import Analysis
from recc.backends.triton.cache import load_module
from recc.backends.triton.scan_codegen import ScanKernelPlan, generate_scan_module
from recc.ir.nodes import Recurrence
from recc.signature import Bound

TILE_BUDGET = 2048  # elements of one [BLOCK_T, ...] tile: keeps generated kernels spill-free
MAX_BLOCK_T = 64


def _pow2(n: int) -> int:
    return 1 << max(0, (max(n, 1) - 1).bit_length())


def block_sizes(plan: ScanKernelPlan, sizes: dict[str, int]) -> dict[str, int]:
    """Whole dims padded to a power of two; the blocked dim and time fill the budget."""
    blocks = {d: _pow2(sizes[d]) for d in plan.layout.dims if d != plan.blocked}
    whole = 1
    for v in blocks.values():
        whole *= v
    if plan.blocked is not None:
        blocks[plan.blocked] = min(_pow2(sizes[plan.blocked]), max(1, 512 // whole))
        whole *= blocks[plan.blocked]
    blocks["T"] = max(1, min(MAX_BLOCK_T, _pow2(TILE_BUDGET // whole + 1) // 2))
    return blocks


class ScanKernel:
    """A spec's generated forward scan kernel, ready to launch."""

    def __init__(self, rec: Recurrence, analysis: Analysis) -> None:
        self.rec = rec
        self.source, self.plan = generate_scan_module(rec, analysis)
        self.module = load_module(self.source, stem=f"{rec.name}_scan")
        self.kernel = getattr(self.module, self.plan.kernel)

    def __call__(self, bound: Bound, output_final_state: bool = True):
        plan = self.plan
        B, T, H = bound.B, bound.T, bound.H or 1
        heads = bound.H is not None
        device = bound.device
        pointers: list[torch.Tensor] = []
        strides: list[int] = []

        def per_step(x: torch.Tensor, n_dims: int) -> None:
            s = x.stride()
            strides.extend([s[0], s[1], s[2] if heads else 0, *s[len(s) - n_dims :]])

        def per_batch(x: torch.Tensor, n_dims: int) -> None:
            s = x.stride()
            strides.extend([s[0], s[1] if heads else 0, *s[len(s) - n_dims :]])

        pointers += [bound.inputs[name] for name, _ in plan.inputs]
        pointers += [bound.params[name] for name, _ in plan.params]
        pointers += [bound.initial_state[name] for name, _ in plan.states]
        outputs = {}
        for name, dims in plan.outputs:
            shape = (B, T, *bound.batch_heads, *bound.shape_of(dims))
            outputs[name] = torch.empty(shape, dtype=bound.out_dtype, device=device)
            pointers.append(outputs[name])
        finals = {}
        for name, dims in plan.states:
            shape = (B, *bound.batch_heads, *bound.shape_of(dims))
            finals[name] = torch.empty(shape, dtype=bound.compute_dtype, device=device)
            pointers.append(finals[name])
        # strides in the kernel's argument order: inputs, params, states, outputs, finals
        for name, dims in plan.inputs:
            per_step(bound.inputs[name], len(dims))
        for name, dims in plan.params:
            p = bound.params[name]
            has_head = p.dim() > len(dims)
            strides.append(p.stride(0) if has_head else 0)
            strides.extend(p.stride()[p.dim() - len(dims) :])
        for name, dims in plan.states:
            per_batch(bound.initial_state[name], len(dims))
            per_batch(finals[name], len(dims))
        for name, dims in plan.outputs:
            per_step(outputs[name], len(dims))
        blocks = block_sizes(plan, bound.sizes)
        n_blocks = 1
        if plan.blocked is not None:
            n_blocks = -(-bound.sizes[plan.blocked] // blocks[plan.blocked])
        sizes = [bound.sizes[d] for d in plan.layout.dims]
        constexprs = {f"BLOCK_{d}": v for d, v in blocks.items()}
        import triton.language as tl

        dtype = tl.float64 if bound.compute_dtype == torch.float64 else tl.float32
        self.kernel[(B * H, n_blocks)](
            *pointers,
            T,
            H,
            *sizes,
            *strides,
            **constexprs,
            STORE_FINAL=output_final_state,
            DTYPE=dtype,
        )
        return outputs, finals


# Shapes the ahead-of-time check compiles at: the default tile sizes for a
# typical layer (D = 256 channels; expanded and matrix states at N = 16, 64).
REPORT_SIZE = {"D": 256, "N": 16, "K": 64, "V": 64, "P": 64}


def compile_jobs(kernel: ScanKernel, arch: int, sizes: dict[str, int] | None = None):
    """A `recc.backends.triton.aot.CompileJob` for this kernel at default tile sizes."""
    from recc.backends.triton.aot import CompileJob

    plan = kernel.plan
    sizes = {d: (sizes or {}).get(d, REPORT_SIZE.get(d, 64)) for d in plan.layout.dims}
    blocks = block_sizes(plan, sizes)
    signature: dict[str, str] = {}
    import inspect

    for name, param in inspect.signature(kernel.kernel.fn).parameters.items():
        if "constexpr" in str(param.annotation):
            continue
        signature[name] = "*fp32" if name.endswith("_ptr") else "i32"
    constexprs = {f"BLOCK_{d}": v for d, v in blocks.items()}
    constexprs["STORE_FINAL"] = True
    import triton.language as tl

    constexprs["DTYPE"] = tl.float32
    return CompileJob(kernel.kernel, signature, constexprs, arch=arch, enable_fp_fusion=True)
