"""Global memory traffic of the generated Triton kernels, forward and backward.

Run:  python benchmarks/triton_traffic.py [SPEC ...]   (default: every spec of specs/)

No GPU here: the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1,
set below before Triton is imported) and every global load and store is
counted by recc.testing.triton_traffic. For each diagonal/MinMax zoo spec at
B=1, T=256, dims 16 (32, 48, ...), fp32, it prints the bytes each kernel
moved and the ratio to the minimum: every tensor the kernel must touch read
or written once (an input or gradient without the split dim once per
channel block; params and states once per program).
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
ROOT = Path(__file__).resolve().parent.parent

import torch  # noqa: E402

from recc.analysis import analyze  # noqa: E402
from recc.backends.triton.launch import TRAINING_BUDGET, ScanKernel, block_sizes  # noqa: E402
from recc.backends.triton.scan_codegen import Unsupported  # noqa: E402
from recc.ir import load  # noqa: E402
from recc.lowering import plan as lowering_plan  # noqa: E402
from recc.signature import bind  # noqa: E402
from recc.testing.triton_interpreter import fast_scan  # noqa: E402
from recc.testing.triton_traffic import count_traffic  # noqa: E402


def nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


def measure(path: Path) -> tuple[str, float, float, int, int] | None:
    rec = load(path)
    analysis = analyze(rec)
    facts = lowering_plan(rec, analysis).scan
    if facts is None:
        return None
    try:
        kernel = ScanKernel(facts)
    except Unsupported:
        return None
    g = torch.Generator().manual_seed(0)
    sizes = {d: 16 * (i + 1) for i, d in enumerate(rec.dims)}
    tensors = {
        i.name: torch.rand((1, 256, *(sizes[d] for d in i.dims)), generator=g) for i in rec.inputs
    }
    tensors.update(
        {p.name: -torch.rand(tuple(sizes[d] for d in p.dims), generator=g) for p in rec.params}
    )
    bound = bind(rec, tensors)
    plan = kernel.plan

    def per_block(dims, blocks_of) -> int:
        return 1 if plan.blocked is None or plan.blocked in dims else blocks_of

    with fast_scan():
        blocks = block_sizes(plan, bound.sizes)
        n_c = 1 if plan.blocked is None else -(-bound.sizes[plan.blocked] // blocks[plan.blocked])
        with count_traffic() as fwd:
            outputs, finals, _ = kernel.forward(bound, True, checkpoints=False)
        fwd_min = sum(nbytes(tensors[n]) * per_block(d, n_c) for n, d in plan.inputs)
        fwd_min += sum(nbytes(tensors[n]) * per_block(d, n_c) for n, d in plan.params)
        fwd_min += sum(2 * nbytes(finals[n]) * per_block(d, n_c) for n, d in plan.states)
        fwd_min += sum(nbytes(y) for y in outputs.values())

        blocks = block_sizes(plan, bound.sizes, TRAINING_BUDGET)
        n_c = 1 if plan.blocked is None else -(-bound.sizes[plan.blocked] // blocks[plan.blocked])
        outputs, finals, ckpts = kernel.forward(bound, True, checkpoints=True)
        d_out = {k: torch.ones_like(v) for k, v in outputs.items()}
        d_fin = {k: torch.ones_like(v) for k, v in finals.items()}
        with count_traffic() as bwd:
            kernel.backward(bound, ckpts, d_out, d_fin)
        bwd_min = sum(2 * nbytes(tensors[n]) * per_block(d, n_c) for n, d in plan.inputs)
        bwd_min += sum(2 * nbytes(tensors[n]) * per_block(d, n_c) for n, d in plan.params)
        bwd_min += sum(
            nbytes(c) * per_block(d, n_c) for (n, d), c in zip(plan.states, ckpts.values())
        )
        bwd_min += sum(2 * nbytes(finals[n]) * per_block(d, n_c) for n, d in plan.states)
        bwd_min += sum(nbytes(y) for y in d_out.values())
    return (
        rec.name,
        (fwd.bytes_read + fwd.bytes_written) / fwd_min,
        (bwd.bytes_read + bwd.bytes_written) / bwd_min,
        fwd.bytes_read + fwd.bytes_written,
        bwd.bytes_read + bwd.bytes_written,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", help="zoo spec names (default: all)")
    args = parser.parse_args()
    paths = sorted((ROOT / "specs").glob("*.rec"))
    if args.specs:
        known = {p.stem: p for p in paths}
        unknown = sorted(set(args.specs) - set(known))
        if unknown:
            parser.error(f"no such spec in specs/: {', '.join(unknown)}")
        paths = [known[name] for name in args.specs]
    # padded lanes compute garbage (e.g. 0/0) that is masked off; numpy warns about it
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    print(f"{'spec':12} {'fwd bytes':>11} {'x min':>6} {'bwd bytes':>11} {'x min':>6}")
    for path in paths:
        row = measure(path)
        if row is not None:
            name, fwd_ratio, bwd_ratio, fwd_bytes, bwd_bytes = row
            print(f"{name:12} {fwd_bytes:11d} {fwd_ratio:6.2f} {bwd_bytes:11d} {bwd_ratio:6.2f}")


if __name__ == "__main__":
    main()
