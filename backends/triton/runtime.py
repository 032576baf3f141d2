"""The runtime of a spec's generated code: kernel launcher, autograd Function, time loop.

Stage: runtime, standalone: this module imports only torch and the standard
library (and triton.language when it launches a kernel), never recc, because
`recc build` copies its source into every built module. recc's own Triton
path runs this same code: `ScanKernel` (`launch.py`) launches through
`Launcher`, and `function.py`'s Function is `ScanFunction`.

A plan is plain data: what the launcher needs to know about the generated
kernels (`recc.backends.triton.launch.plan_data` writes it), e.g.

    {"forward": "mingru_scan_fwd", "backward": "mingru_scan_bwd",
     "dims": ("D",),                   # the tile's dims: the kernels' size arguments, in order
     "blocked": "D",                   # the dim split across programs (None: no split)
     "blocks": {"<time>": "BLOCK_T", "D": "BLOCK_D"},   # each axis's constexpr block size
     "budgets": {"inference": 1024, "training": 256, "max_block_t": 64},
     "inputs": (("x", ("D",)), ...),   # what the kernels read and write, with dims
     "params": ..., "states": ..., "outputs": ...,
     "forward_args": ((("input", "x"), ("b", "t", "h"), ("D",)), ...),
     "backward_args": ...,
     "unread": ()}                     # states the kernels leave out (final from the last step)

Each kernel argument is (key, axes, dims): the launcher's (role, spec name), the
launch axes it has ("c" channel block, "b" batch, "t" time, "h" heads: stride 0
when there are none, "k" checkpoint index), then the tensor's dims; the kernel
takes its pointer, then after the sizes one stride per axis and dim.

A bound call (`Bound`, from the binder `recc.binding`) is what every function
here takes: B, T, H, sizes, inputs, params and initial states in the compute
dtype, the output dtype and the device.
"""

import os
from typing import Any

import torch

TIME = "<time>"  # the time axis's key in a plan's "blocks" (no dim can be named so)
# Elements of one [BLOCK_T, ...] tile. Chosen so the generated kernels compile
# without register spills (tests/test_triton_scan.py checks sm_80 and sm_90):
# the forward alone, and training (the forward that checkpoints, whose time
# blocks the backward must share, and the backward, which holds ~3x the tiles).
INFERENCE_BUDGET = 1024
TRAINING_BUDGET = 256
MAX_BLOCK_T = 64


def _pow2(n: int) -> int:
    return 1 << max(0, (max(n, 1) - 1).bit_length())


def block_sizes(plan: dict, sizes: dict[str, int], budget: int | None = None) -> dict[str, int]:
    """Whole dims padded to a power of two; the split dim and time fill the budget.
    Keyed by dim, and `TIME` for time."""
    budgets = plan["budgets"]
    budget = budgets["inference"] if budget is None else budget
    blocked = plan["blocked"]
    blocks = {d: _pow2(sizes[d]) for d in plan["dims"] if d != blocked}
    whole = 1
    for v in blocks.values():
        whole *= v
    if blocked is not None:
        blocks[blocked] = min(_pow2(sizes[blocked]), max(1, budget // 4 // whole))
        whole *= blocks[blocked]
    blocks[TIME] = max(1, min(budgets["max_block_t"], _pow2(budget // whole + 1) // 2))
    return blocks


def _strides(axes: tuple, dims: tuple, x: torch.Tensor, present: set[str]) -> list[int]:
    """One stride per axis; an axis the tensor lacks (no heads) gets 0."""
    out, i = [], 0
    for axis in axes:
        if axis in present:
            out.append(x.stride(i))
            i += 1
        else:
            out.append(0)
    return out + list(x.stride()[x.dim() - len(dims) :])


class Launcher:
    """A spec's generated forward and backward scan kernels, launched from a plan."""

    def __init__(self, plan: dict, kernels: Any) -> None:
        """`kernels`: a mapping from the kernels' names to the `@triton.jit` functions
        (a module's `vars()`, or `globals()` in a built module)."""
        self.plan = plan
        self.forward_kernel = kernels[plan["forward"]]
        self.backward_kernel = kernels[plan["backward"]]

    def partial(self, dims: tuple) -> bool:
        """Gradients of a tensor without the split dim are summed over channel blocks."""
        blocked = self.plan["blocked"]
        return blocked is not None and blocked not in dims

    def _grid(self, bound: Any, training: bool):
        budgets = self.plan["budgets"]
        blocks = block_sizes(
            self.plan, bound.sizes, budgets["training" if training else "inference"]
        )
        blocked, n_c = self.plan["blocked"], 1
        if blocked is not None:
            n_c = -(-bound.sizes[blocked] // blocks[blocked])
        return blocks, n_c, (bound.B * (bound.H or 1), n_c)

    def _inputs_and_params(self, bound: Any) -> dict:
        """Every input and param with the launch axes it varies along (b, t, h)."""
        heads = set() if bound.H is None else {"h"}
        tensors: dict = {}
        for name, _ in self.plan["inputs"]:
            tensors[("input", name)] = (bound.inputs[name], {"b", "t"} | heads)
        for name, dims in self.plan["params"]:
            p = bound.params[name]
            tensors[("param", name)] = (p, {"h"} if p.dim() > len(dims) else set())
        return tensors

    def _launch(self, kernel, args, tensors, bound: Any, blocks, grid, **flags) -> None:
        import triton.language as tl

        pointers, strides = [], []
        for key, axes, dims in args:
            x, present = tensors[tuple(key)]
            pointers.append(x)
            strides += _strides(axes, dims, x, present)
        sizes = [bound.sizes[d] for d in self.plan["dims"]]
        dtype = tl.float64 if bound.compute_dtype == torch.float64 else tl.float32
        kernel[grid](
            *pointers,
            bound.T,
            bound.H or 1,
            *sizes,
            *strides,
            **{self.plan["blocks"][d]: v for d, v in blocks.items()},
            **flags,
            DTYPE=dtype,
        )

    def forward(self, bound: Any, output_final_state: bool = True, checkpoints: bool = False):
        """Outputs and final states; with `checkpoints`, also the states entering each
        time block (what the backward restarts from)."""
        plan, B, T = self.plan, bound.B, bound.T
        blocks, _, grid = self._grid(bound, training=checkpoints)
        heads = set() if bound.H is None else {"h"}
        step, batch = {"b", "t"} | heads, {"b"} | heads
        n_k = max(1, -(-T // blocks[TIME]))
        tensors = self._inputs_and_params(bound)
        outputs, finals, ckpts = {}, {}, {}
        for name, dims in plan["states"]:
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
        for name, dims in plan["outputs"]:
            shape = (B, T, *bound.batch_heads, *bound.shape_of(dims))
            outputs[name] = torch.empty(shape, dtype=bound.out_dtype, device=bound.device)
            tensors[("out", name)] = (outputs[name], step)
        if T > 0:
            self._launch(
                self.forward_kernel,
                plan["forward_args"],
                tensors,
                bound,
                blocks,
                grid,
                STORE_FINAL=output_final_state,
                STORE_CKPT=checkpoints,
            )
        else:
            finals = {k: bound.initial_state[k].clone() for k, _ in plan["states"]}
        return outputs, finals, ckpts

    def backward(self, bound: Any, ckpts: dict, d_outputs: dict, d_finals: dict):
        """Gradients of inputs, params and initial states (dicts by name), given the
        cotangents of the outputs and final states (None for zero)."""
        plan, B, T = self.plan, bound.B, bound.T
        blocks, n_c, grid = self._grid(bound, training=True)
        heads = set() if bound.H is None else {"h"}
        step, batch = {"b", "t"} | heads, {"b"} | heads
        dev, dt = bound.device, bound.compute_dtype
        tensors = self._inputs_and_params(bound)
        for name, dims in plan["states"]:
            tensors[("ckpt", name)] = (ckpts[name], {"b", "h", "k"})
            shape = (B, *bound.batch_heads, *bound.shape_of(dims))
            d = d_finals.get(name)
            d = torch.zeros((), dtype=dt, device=dev).expand(shape) if d is None else d.to(dt)
            tensors[("dfinal", name)] = (d, batch)
        for name, dims in plan["outputs"]:
            shape = (B, T, *bound.batch_heads, *bound.shape_of(dims))
            d = d_outputs.get(name)
            d = torch.zeros((), dtype=dt, device=dev).expand(shape) if d is None else d
            tensors[("dout", name)] = (d, step)
        grads: dict = {}
        for name, dims in plan["inputs"]:
            shape = (B, T, *bound.batch_heads, *bound.shape_of(dims))
            key = ("input_grad", name)
            if self.partial(dims):
                grads[key] = torch.zeros((n_c, *shape), dtype=dt, device=dev)
                tensors[key] = (grads[key], {"c"} | step)
            else:
                grads[key] = torch.zeros(shape, dtype=dt, device=dev)
                tensors[key] = (grads[key], step)
        for name, dims in plan["params"]:
            shape = (B, bound.H or 1, n_c, *bound.shape_of(dims))
            key = ("param_grad", name)
            grads[key] = torch.zeros(shape, dtype=dt, device=dev)
            tensors[key] = (grads[key], {"b", "h", "c"})
        for name, dims in plan["states"]:
            shape = (B, *bound.batch_heads, *bound.shape_of(dims))
            key = ("dinit", name)
            if self.partial(dims):
                grads[key] = torch.zeros((n_c, *shape), dtype=dt, device=dev)
                tensors[key] = (grads[key], {"c"} | batch)
            else:
                grads[key] = torch.zeros(shape, dtype=dt, device=dev)
                tensors[key] = (grads[key], batch)
        if T > 0:
            self._launch(self.backward_kernel, plan["backward_args"], tensors, bound, blocks, grid)
        else:
            for name, _ in plan["states"]:
                d = d_finals.get(name)
                if d is not None:
                    grads[("dinit", name)] = d.to(dt)
        result = {}
        for name, dims in plan["inputs"]:
            g = grads[("input_grad", name)]
            result[name] = g.sum(0) if self.partial(dims) else g
        for name, dims in plan["params"]:
            g = grads[("param_grad", name)].sum(dim=(0, 2))  # over batch, channel blocks
            result[name] = g if bound.params[name].dim() > len(dims) else g.sum(0)
        init = {}
        for name, dims in plan["states"]:
            g = grads[("dinit", name)]
            init[name] = g.sum(0) if self.partial(dims) and T > 0 else g
        return result, init


# ---- the autograd Function: the kernels forward, the backward kernel backward ----


class Program:
    """What the Function runs: a launcher, and how to bind its leaves into a call
    (`bind(tensors, initial_state) -> Bound`, without the NaN check: the caller has
    checked them)."""

    def __init__(self, launcher: Launcher, bind: Any) -> None:
        self.launcher = launcher
        self.bind = bind


def scan_forward(ctx, program: Program, names: tuple, n_tensors: int, leaves: tuple, first: int):
    """The Function's forward: `leaves` are the inputs and params (`names[:n_tensors]`),
    then the initial states; `first` is the position of the first leaf among the
    Function's arguments. Returns the outputs, then the final states, in plan order."""
    plan = program.launcher.plan
    tensors = dict(zip(names[:n_tensors], leaves[:n_tensors]))
    init = dict(zip(names[n_tensors:], leaves[n_tensors:]))
    bound = program.bind(tensors, init)
    training = any(ctx.needs_input_grad[first:])
    outputs, finals, ckpts = program.launcher.forward(bound, True, checkpoints=training)
    ctx.save_for_backward(*leaves, *ckpts.values())
    ctx.scan = (program, names, n_tensors, len(leaves), first)
    return (
        *(outputs[name] for name, _ in plan["outputs"]),
        *(finals[name] for name, _ in plan["states"]),
    )


def scan_backward(ctx, grads: tuple) -> tuple:
    """The Function's backward: the leaves' gradients (None where none is needed)."""
    program, names, n, n_leaves, first = ctx.scan
    plan = program.launcher.plan
    saved = ctx.saved_tensors
    leaves, ckpt_list = saved[:n_leaves], saved[n_leaves:]
    bound = program.bind(dict(zip(names[:n], leaves[:n])), dict(zip(names[n:], leaves[n:])))
    ckpts = dict(zip([name for name, _ in plan["states"]], ckpt_list))
    n_out = len(plan["outputs"])
    d_out = {name: g for (name, _), g in zip(plan["outputs"], grads[:n_out])}
    d_fin = {name: g for (name, _), g in zip(plan["states"], grads[n_out:])}
    d_tensors, d_init = program.launcher.backward(bound, ckpts, d_out, d_fin)
    leaf_grads = []
    for i, (name, leaf) in enumerate(zip(names, leaves)):
        if not ctx.needs_input_grad[first + i]:
            leaf_grads.append(None)
            continue
        g = d_tensors.get(name) if i < n else d_init.get(name)
        leaf_grads.append(None if g is None else g.to(leaf.dtype))
    return tuple(leaf_grads)


class ScanFunction(torch.autograd.Function):
    """`ScanFunction.apply(program, names, n_tensors, *leaves)`: outputs, then final states."""

    @staticmethod
    def forward(ctx, program: Program, names: tuple, n_tensors: int, *leaves: torch.Tensor):
        return scan_forward(ctx, program, names, n_tensors, leaves, first=3)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        return (None, None, None, *scan_backward(ctx, grads))


def split_results(plan: dict, results: tuple) -> tuple[dict, dict]:
    """(outputs, final states) by name from what the Function returned."""
    n_out = len(plan["outputs"])
    outputs = {name: r for (name, _), r in zip(plan["outputs"], results[:n_out])}
    finals = {name: r for (name, _), r in zip(plan["states"], results[n_out:])}
    return outputs, finals


# ---- the time loop: a printed step, one step after another ----


def full(value: torch.Tensor, bound: Any, dims: tuple) -> torch.Tensor:
    """Broadcast a per-step value to its full `[B, (H), *dims]` shape."""
    shape = (bound.B, *bound.batch_heads, *bound.shape_of(dims))
    return value.expand(shape) if tuple(value.shape) != shape else value


def step_arguments(signature: dict, bound: Any, t: int) -> list:
    """A printed step's arguments at step t: the inputs, params and dims read as values."""
    return [
        *(bound.inputs[name][:, t] for name, _ in signature["inputs"]),
        *(bound.params[name] for name, _ in signature["params"]),
        *(bound.params[d] for d in signature["dim_values"]),
    ]


def run_steps(step: Any, signature: dict, bound: Any) -> tuple[dict, dict]:
    """(outputs `[B, T, (H), ...]`, final states `[B, (H), ...]`) by running
    `step(*inputs at t, *params, *states) -> (new states, outputs)` T times, as
    recc's interpreter does (outputs in `bound.out_dtype`, states in the compute
    dtype). Differentiable by torch autograd."""
    states = [bound.initial_state[name] for name, _, _ in signature["states"]]
    per_step: list[list[torch.Tensor]] = [[] for _ in signature["outputs"]]
    for t in range(bound.T):
        states, outs = step(*step_arguments(signature, bound, t), *states)
        for values, value, (_, dims) in zip(per_step, outs, signature["outputs"]):
            values.append(full(value, bound, dims))
    outputs = {}
    for values, (name, dims) in zip(per_step, signature["outputs"]):
        if values:
            outputs[name] = torch.stack(values, dim=1).to(bound.out_dtype)
        else:
            shape = (bound.B, 0, *bound.batch_heads, *bound.shape_of(dims))
            outputs[name] = torch.zeros(shape, dtype=bound.out_dtype, device=bound.device)
    finals = {
        name: full(value, bound, dims)
        for value, (name, dims, _) in zip(states, signature["states"])
    }
    return outputs, finals


def last_step(function: Any, names: tuple, signature: dict, bound: Any) -> dict:
    """The finals of states nothing reads: `function(*inputs at T-1, *params)` returns
    their updates at the last step (with T = 0, the initial states)."""
    if bound.T == 0:
        return {n: bound.initial_state[n] for n in names}
    dims = {name: d for name, d, _ in signature["states"]}
    values = function(*step_arguments(signature, bound, bound.T - 1))
    return {n: full(v, bound, dims[n]) for n, v in zip(names, values)}


# ---- the entry point's choices and results ----


def check_flags(error: type, **flags: Any) -> None:
    for flag, value in flags.items():
        if not isinstance(value, bool):
            raise error(
                f"{flag} must be True or False, got {value!r}",
                hint=f"pass {flag}=True or {flag}=False",
            )


def interpreted() -> bool:
    """Triton runs CPU tensors through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def choose_backend(backend: Any, device: torch.device, kernels: str | None, error: type) -> str:
    """ "triton" or "torch" for a call on `device`'s tensors. `kernels`: None if the
    module has Triton kernels, else why not. "auto" runs Triton on CUDA tensors and
    the torch loop elsewhere; "triton" on CPU tensors needs TRITON_INTERPRET=1."""
    if backend not in ("auto", "triton", "torch"):
        raise error(f"unknown backend {backend!r}", hint="choose one of: auto, triton, torch")
    if backend == "torch" or (backend == "auto" and (kernels or device.type != "cuda")):
        return "torch"
    if kernels:
        raise error(
            f"backend 'triton': this module has no Triton kernels ({kernels})",
            hint="use backend='auto' or 'torch'",
        )
    if device.type != "cuda" and not (device.type == "cpu" and interpreted()):
        raise error(
            f"backend 'triton' needs CUDA tensors; these are on {device}",
            hint="move the tensors to a GPU, or set TRITON_INTERPRET=1 before triton is "
            "imported to run CPU tensors in Triton's interpreter (for testing), or use "
            "backend='torch'",
        )
    return "triton"


def results(signature: dict, outputs: dict, finals: dict, output_final_state: bool) -> Any:
    """What the entry point returns: the output (a tuple of several), and the final
    state(s) if asked, in declaration order."""
    out = tuple(outputs[name] for name, _ in signature["outputs"])
    result: Any = out[0] if len(out) == 1 else out
    if not output_final_state:
        return result
    states = tuple(finals[name] for name, _, _ in signature["states"])
    return result, (states[0] if len(states) == 1 else states)
