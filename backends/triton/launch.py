"""Load a spec's generated Triton module and launch its kernels.

Stage: backend (triton), runtime side. The module source is written once to
the kernel cache (`recc.backends.triton.cache`) and imported from there
(Triton reads a kernel's source from its file). The launcher (`runtime.Launcher`,
standalone so that `recc build` modules carry it too) turns a bound call into
pointers, strides and a grid, allocates outputs, checkpoints and gradients,
and sums per-channel-block partial gradients; it reads the plan as data
(`plan_data`).
"""

from __future__ import annotations

import inspect

from recc.backends.triton import runtime
from recc.backends.triton.cache import load_module
from recc.backends.triton.runtime import (
    INFERENCE_BUDGET,
    MAX_BLOCK_T,
    TRAINING_BUDGET,
    Launcher,
)
from recc.backends.triton.runtime import block_sizes as _block_sizes
from recc.backends.triton.scan_codegen import (
    ScanKernelPlan,
    TensorArg,
    generate_scan_module,
    kernel_spec,
)
from recc.backends.triton.tile import TIME
from recc.lowering import ScanPlan
from recc.signature import Bound

# the runtime's key for time is the tile's
assert runtime.TIME == TIME


def plan_data(plan: ScanKernelPlan, unread: tuple[str, ...] = ()) -> dict:
    """The plan as plain data, what `runtime.Launcher` reads (and `recc build` writes)."""

    def args(arguments: tuple[TensorArg, ...]) -> tuple:
        return tuple((a.key, a.axes, a.dims) for a in arguments)

    return {
        "forward": plan.forward,
        "backward": plan.backward,
        "dims": tuple(plan.layout.dims),
        "blocked": plan.blocked,
        "blocks": {axis: plan.block_name(axis) for axis in (TIME, *plan.layout.dims)},
        "budgets": {
            "inference": INFERENCE_BUDGET // plan.tile_scale,
            "training": TRAINING_BUDGET // plan.tile_scale,
            "max_block_t": MAX_BLOCK_T,
        },
        "inputs": plan.inputs,
        "params": plan.params,
        "states": plan.states,
        "outputs": plan.outputs,
        "forward_args": args(plan.forward_args),
        "backward_args": args(plan.backward_args),
        "unread": tuple(unread),
    }


def block_sizes(
    plan: ScanKernelPlan, sizes: dict[str, int], budget: int = INFERENCE_BUDGET
) -> dict[str, int]:
    """Whole dims padded to a power of two; the split dim and time fill the budget
    (divided by the plan's `tile_scale`, as the launcher does)."""
    return _block_sizes(plan_data(plan), sizes, budget // plan.tile_scale)


class ScanKernel:
    """A spec's generated forward and backward scan kernels, ready to launch
    (through `runtime.Launcher`, the code a `recc build` module runs)."""

    def __init__(self, facts: ScanPlan, module=None) -> None:
        """The kernels of a spec's scan plan (`facts`; Unsupported if it has none).
        `module`: an already imported module with these kernels; by default they are
        generated and loaded from the kernel cache."""
        self.spec = facts.spec
        computed = kernel_spec(facts)
        self.rec, self.unread = computed.spec, facts.unread
        self.source, self.plan = generate_scan_module(computed)
        self.module = module or load_module(self.source, stem=f"{self.spec.name}_scan")
        self.data = plan_data(self.plan, self.unread)
        self.launcher = Launcher(self.data, vars(self.module))
        self.forward_kernel = self.launcher.forward_kernel
        self.backward_kernel = self.launcher.backward_kernel

    def forward(self, bound: Bound, output_final_state: bool = True, checkpoints: bool = False):
        """Outputs and final states; with `checkpoints`, also the states entering each
        time block (what the backward restarts from)."""
        return self.launcher.forward(bound, output_final_state, checkpoints)

    def __call__(self, bound: Bound, output_final_state: bool = True):
        outputs, finals, _ = self.forward(bound, output_final_state)
        return outputs, finals

    def backward(self, bound: Bound, ckpts, d_outputs, d_finals):
        """Gradients of inputs, params and initial states (dicts by name), given the
        cotangents of the outputs and final states (None for zero)."""
        return self.launcher.backward(bound, ckpts, d_outputs, d_finals)


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
