"""Load a plan's generated chunkwise kernels and launch them (forward).

Stage: backend (triton), runtime side. Lays a bound call out as the kernels read it
(every input `[B, T, H, *dims]` contiguous in the compute dtype, H = 1 without
heads; params `[H, *dims]`; the state in the plan's orientation `[B*H, rows, cols]`),
launches `chunk_states` then `chunk_outputs` (backends/triton/chunk_codegen.py) and
returns outputs and final states as the torch path does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recc.backends.triton.cache import load_module
from recc.backends.triton.chunk_codegen import BLOCK_T, generate_chunk_module
from recc.backends.triton.tile import TIME
from recc.ir.nodes import Ref, walk
from recc.lowering import ChunkPlan
from recc.signature import Bound

# Rows of the state per program (the state tile is [rows, cols] in registers) in each
# kernel, and warps per program: at K = V = 64 these compile for sm_80 and sm_90 with
# no spills (`compile_jobs`; chunk_states spills with 4 warps, chunk_outputs of GLA
# with 64 rows at 8 or 16 warps).
MAX_BLOCK_ROWS = {"chunk_states": 64, "chunk_outputs": 64}
# a decay over the columns (GLA) has chunk_outputs loop over the sub-block's source
# steps with [BLOCK_T, cols] tiles beside the running state: 32 rows fit; companions
# (mLSTM's normaliser) add rows and tables of their own: 16
ROWS_WITH_VECTOR_DECAY = 32
ROWS_WITH_COMPANIONS = 16
NUM_WARPS = 8


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << (max(n, 1) - 1).bit_length())


class ChunkKernel:
    """A plan's generated chunkwise kernels (Unsupported if it has none)."""

    def __init__(self, plan: ChunkPlan) -> None:
        self.plan = plan
        self.source, self.kernel_plan = generate_chunk_module(plan)
        self.module = load_module(self.source, stem=f"{plan.spec.name}_chunk")

    def blocks(self, kernel: str, R: int, C: int) -> dict[str, int]:
        """The block constexprs of `kernel` ("chunk_states" or "chunk_outputs")."""
        p, kp = self.plan, self.kernel_plan
        most = MAX_BLOCK_ROWS[kernel]
        if kernel == "chunk_outputs" and p.companions:
            most = ROWS_WITH_COMPANIONS
        elif kernel == "chunk_outputs" and p.decay.dims:
            most = ROWS_WITH_VECTOR_DECAY
        return {
            kp.blocks[TIME]: BLOCK_T,
            kp.blocks[p.rows]: min(most, _pow2(R)),
            kp.blocks[p.cols]: _pow2(C),
        }

    def __call__(self, bound: Bound, chunk: int | None = None):
        import triton
        import triton.language as tl

        p, b = self.plan, bound
        L = chunk or p.chunk
        assert L % BLOCK_T == 0, L
        nsub = L // BLOCK_T
        module = self.module
        H = b.H or 1
        N, T = b.B * H, b.T
        R, C = b.sizes[p.rows], b.sizes[p.cols]
        dtype, device = b.compute_dtype, b.device
        nc = max(1, triton.cdiv(T, L))

        def laid_out(x: torch.Tensor) -> torch.Tensor:  # [B, T, (H), *dims] -> [B, T, H, ...]
            return (x if b.H is not None else x.unsqueeze(2)).to(dtype).contiguous()

        inputs = [laid_out(b.inputs[n]) for n in self.kernel_plan.inputs]
        params = [self._param(b, n, H, dtype) for n in self.kernel_plan.params]
        S0 = b.initial_state[p.state]
        if p.transposed:
            S0 = S0.transpose(-1, -2)
        S0 = torch.broadcast_to(S0, (b.B, *b.batch_heads, R, C)).reshape(N, R, C)
        S0 = S0.to(dtype).contiguous()
        entering = torch.empty((N, nc, R, C), dtype=dtype, device=device)
        final = torch.empty((N, R, C), dtype=dtype, device=device)
        J = len(p.companions)
        companions = []  # the companion states, J rows of their own: [N, J, C]
        if J:
            n0 = torch.stack([b.initial_state[c.state] for c in p.companions], dim=-2)
            n0 = torch.broadcast_to(n0, (b.B, *b.batch_heads, J, C)).reshape(N, J, C)
            companions = [
                n0.to(dtype).contiguous(),
                torch.empty((N, nc, J, C), dtype=dtype, device=device),
                torch.empty((N, J, C), dtype=dtype, device=device),
            ]
        outputs = {
            n: torch.empty((b.B, T, H, R), dtype=dtype, device=device)
            for n in self.kernel_plan.outputs
        }
        consts = dict(NSUB=nsub, DTYPE=tl.float64 if dtype == torch.float64 else tl.float32)
        rows = self.kernel_plan.blocks[p.rows]
        sizes = (T, H, R, C, nc)
        blocks = self.blocks("chunk_states", R, C)
        module.chunk_states[(N, triton.cdiv(R, blocks[rows]))](
            *inputs,
            *params,
            S0,
            entering,
            final,
            *companions,
            *sizes,
            **consts,
            **blocks,
            num_warps=NUM_WARPS,
        )
        if T > 0:
            blocks = self.blocks("chunk_outputs", R, C)
            module.chunk_outputs[(N, nc, triton.cdiv(R, blocks[rows]))](
                *inputs,
                *params,
                entering,
                *companions[1:2],
                *outputs.values(),
                *sizes,
                **consts,
                **blocks,
                num_warps=NUM_WARPS,
            )
        finals = final.reshape(b.B, *b.batch_heads, R, C)
        if p.transposed:
            finals = finals.transpose(-1, -2).contiguous()
        result = {}
        for n, o in outputs.items():
            o = o if b.H is not None else o[:, :, 0]
            result[n] = o.to(b.out_dtype)
        ends = {p.state: finals}
        for j, c in enumerate(p.companions):
            ends[c.state] = companions[2][:, j].reshape(b.B, *b.batch_heads, C)
        return result, ends

    def _param(self, b: Bound, name: str, H: int, dtype) -> torch.Tensor:
        """A param (or a dim read as a value) as `[H, *dims]`, contiguous."""
        x = b.params[name]
        dims = next((q.dims for q in self.plan.spec.params if q.name == name), ())
        if x.dim() == len(dims):  # one for every head
            x = x.unsqueeze(0).expand(H, *x.shape)
        return x.to(dtype).contiguous()


@dataclass(frozen=True)
class Counts:
    """Global-memory bytes and dot FLOPs of one forward call of both kernels, from the
    kernels' structure (what recc.testing.triton_traffic counts under the
    interpreter: masked lanes move nothing, dots count their padded tiles)."""

    bytes_read: int
    bytes_written: int
    dot_flops: int


def counts(
    kernel: ChunkKernel, B: int, T: int, H: int, R: int, C: int, chunk: int = 0, word: int = 4
) -> Counts:
    """The `Counts` of a call with these sizes (H = 1 without heads), `word` bytes per
    element (4: fp32, the compute dtype of fp32, bf16 and fp16 inputs; 8: fp64)."""
    p, kp = kernel.plan, kernel.kernel_plan
    L = chunk or p.chunk
    N, nc, nsub = B * H, max(1, -(-T // L)), L // BLOCK_T
    rec = p.spec
    dims = {i.name: i.dims for i in rec.inputs}
    dims.update({q.name: q.dims for q in rec.params})
    size = {p.rows: R, p.cols: C}
    lets = {let.name: let.expr for let in p.state_free_lets}

    def reads(exprs) -> set[str]:
        names, todo = set(), [e for e in exprs if e is not None]
        while todo:
            for node in walk(todo.pop()):
                if isinstance(node, Ref) and node.name not in names:
                    names.add(node.name)
                    if node.name in lets:
                        todo.append(lets[node.name])
        return names & {i.name for i in rec.inputs}

    def numel(name: str) -> int:
        n = 1
        for d in dims.get(name, ()):
            n *= size[d]
        return n

    def loaded(names, programs_per_n: int, rows_blocks: int) -> int:
        """Inputs read by every program over its steps: over the rows once in all."""
        total = 0
        for n in names:
            again = 1 if p.rows in dims[n] else rows_blocks
            total += N * T * numel(n) * again
        params = sum(
            (1 if p.rows in dims.get(q, ()) else rows_blocks) * numel(q) for q in kp.params
        )
        return total + N * programs_per_n * params // rows_blocks

    writes_exprs = [p.decay, *(w.direction for w in p.writes), *(w.inject for w in p.writes)]
    writes_exprs += [z for c in p.companions for z in c.scales]
    probes = [q for r in p.readouts for q in r.probes]
    outputs_exprs = writes_exprs + [q.probe for q in probes] + [r.expr for r in p.readouts]
    J, M = len(p.companions), len(p.writes)
    BC = _pow2(C)
    sizes_s = kernel.blocks("chunk_states", R, C)
    sizes_o = kernel.blocks("chunk_outputs", R, C)
    BRs, BRo = sizes_s[kp.blocks[p.rows]], sizes_o[kp.blocks[p.rows]]
    nrs, nro = -(-R // BRs), -(-R // BRo)
    read = loaded(reads(writes_exprs), nrs, nrs) + N * R * C  # + the initial state
    read += N * nrs * J * C  # every row block reads the companions' start
    written = N * (nc + 1) * (R + J) * C  # entering states and the final one
    read += loaded(reads(outputs_exprs), nc * nro, nro) + N * nc * R * C + N * nc * nro * J * C
    written += N * T * R * len(p.readouts)
    dot = 2 * BLOCK_T * BC
    flops = N * nrs * nc * nsub * M * dot * BRs  # chunk_states: y^T (e * suffix)
    rows_probes = sum(1 for q in probes if q.companion is None)
    per_sub = M * dot * BRo + rows_probes * dot * BRo  # the state carried; S p
    if not p.decay.dims:  # the scalar table: P E^T, then A Y for the probes of S
        per_sub += M * len(probes) * dot * BLOCK_T + M * rows_probes * 2 * BLOCK_T**2 * BRo
    flops += N * nro * nc * nsub * per_sub
    return Counts(read * word, written * word, flops)


# Shapes the ahead-of-time check compiles at: a typical head (K = V = 64, Mamba2's
# N = 64 and P = 64).
REPORT_SIZE = 64


def compile_jobs(kernel: ChunkKernel, arch: int, size: int = REPORT_SIZE, chunk: int = 64):
    """`recc.backends.triton.aot.CompileJob`s of both kernels at default tiles."""
    import inspect

    import triton.language as tl

    from recc.backends.triton.aot import CompileJob

    jobs = []
    for fn in (kernel.module.chunk_states, kernel.module.chunk_outputs):
        blocks = kernel.blocks(fn.fn.__name__, size, size)
        signature = {}
        for name, param in inspect.signature(fn.fn).parameters.items():
            if "constexpr" not in str(param.annotation):
                signature[name] = "*fp32" if name.endswith("_ptr") else "i32"
        constexprs = {**blocks, "NSUB": chunk // BLOCK_T, "DTYPE": tl.float32}
        jobs.append(
            CompileJob(
                fn, signature, constexprs, arch=arch, num_warps=NUM_WARPS, enable_fp_fusion=True
            )
        )
    return jobs
