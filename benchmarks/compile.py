"""A model around a compiled recurrence under torch.compile: graph breaks, compile
time, and the cost of the custom op's recomputing backward.

Run:  python benchmarks/compile.py [--backend inductor|aot_eager]

For one zoo spec per lowering (minGRU: the scan; max-plus: MinMax; GLA with heads:
the matrix-state scan; Gated DeltaNet: chunkwise DPLR; GRU: nonlinear), a model
`scale * inputs -> recurrence -> tanh -> sum` (fp32, B=2, T=64, H=2 where the spec has
heads; the normal input regime's tensors) is compiled with `fullgraph=True,
dynamic=True`:

  graph breaks   from `torch._dynamo.explain` (0 is what fullgraph promises)
  compile        seconds of the first forward+backward (compile included)
  new T          seconds of a forward+backward at another length (a recompile
                 would show here)
  eager f+b      the same forward+backward uncompiled, and the compiled one's
                 ratio to it (the op's backward recomputes the forward)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import recc
from recc.testing.regimes import NORMAL

SPECS = Path(__file__).resolve().parent.parent / "specs"
ONE_PER_LOWERING = ["mingru", "maxplus", "gla", "gated_deltanet", "gru"]


def case(name: str, T: int):
    """The spec's function, a model around it (a learned scale on every input, the
    recurrence, tanh, a sum), and a call's inputs at length T (fp32)."""
    fn = recc.compile(SPECS / f"{name}.rec")
    heads = 2 if name in ("gla", "gated_deltanet") else None
    scale = torch.nn.Parameter(torch.ones(()))

    def model(tensors):
        y = fn(**{k: v * scale if k in inputs else v for k, v in tensors.items()})
        y = y[0] if isinstance(y, tuple) else y
        return torch.tanh(y).sum()

    inputs = {i.name for i in fn.spec.inputs}

    def call(T: int) -> dict:
        tensors, _ = NORMAL.call(fn.spec, T, seed=T, heads=heads)
        return {k: v.float() for k, v in tensors.items()}

    return model, scale, call


def row(name: str, backend: str) -> str:
    torch._dynamo.reset()
    model, scale, call = case(name, 64)
    x, other = call(64), call(97)
    explained = torch._dynamo.explain(model)(x)
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=backend)

    def run(f, inputs) -> float:
        scale.grad = None
        start = time.perf_counter()
        f(inputs).backward()
        return time.perf_counter() - start

    first = run(compiled, x)
    new_t = run(compiled, other)
    eager = min(run(model, other) for _ in range(3))
    steady = min(run(compiled, other) for _ in range(3))
    return (
        f"{name:16} {explained.graph_break_count:12d} {first:10.2f} {new_t:9.3f} "
        f"{eager:12.4f} {steady / eager:15.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inductor", choices=["inductor", "aot_eager"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, backend={args.backend}, fp32, B=2, T=64 then 97")
    print(f"{'spec':16} {'graph breaks':>12} {'compile s':>10} {'new T s':>9} "
          f"{'eager f+b s':>12} {'compiled/eager':>15}")  # fmt: skip
    for name in ONE_PER_LOWERING:
        print(row(name, args.backend))


if __name__ == "__main__":
    main()
