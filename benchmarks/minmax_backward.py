"""MinMax gradients on this CPU: recc's torch backend against a hand-written loop.

Run:  python benchmarks/minmax_backward.py [--quick]

Side by side in one run, fp32, B=4, T=4096 (--quick: 1024), D=256, the
max-plus recurrence of specs/maxplus.rec (h = max(h + a, xb), a =
-softplus(xa)); each contender returns every h_t, then loss = sum(out * w)
is differentiated:
  python loop   gates up front, `for t: h = torch.maximum(h + a[:, t], xb[:, t])`
                under autograd
  recc torch    recc.compile(spec, backend="torch"): the chunked scan forward,
                the spec's own routing backward (backends/torch/spec_adjoint.py)
Contenders are interleaved round-robin (the order shuffled every round);
the ratio is "loop time / recc time" (> 1: recc is faster).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

import recc

ROOT = Path(__file__).resolve().parent.parent


def python_loop(xa, xb, w):
    a = -torch.nn.functional.softplus(xa)
    h = torch.full((xa.shape[0], xa.shape[2]), float("-inf"))
    outs = []
    for t in range(xa.shape[1]):
        h = torch.maximum(h + a[:, t], xb[:, t])
        outs.append(h)
    out = torch.stack(outs, 1)
    (out * w).sum().backward()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T=1024 and fewer repeats")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    B, T, D = 4, 1024 if args.quick else 4096, 256
    repeats = 3 if args.quick else 5
    gen = torch.Generator().manual_seed(0)
    xa = torch.randn(B, T, D, generator=gen).requires_grad_()
    xb = torch.randn(B, T, D, generator=gen).requires_grad_()
    w = torch.randn(B, T, D, generator=gen)
    fn = recc.compile(str(ROOT / "specs" / "maxplus.rec"), backend="torch")

    def recc_torch():
        out = fn(xa=xa, xb=xb)  # the one output, h
        (out * w).sum().backward()

    contenders = {"recc torch": recc_torch, "python loop": lambda: python_loop(xa, xb, w)}
    # the gradients agree before anything is timed
    recc_torch()
    mine = (xa.grad.clone(), xb.grad.clone())
    xa.grad = xb.grad = None
    python_loop(xa, xb, w)
    for got, want in zip(mine, (xa.grad, xb.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for _ in range(repeats):
        random.shuffle(order)
        for name in order:
            xa.grad = xb.grad = None
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    best = {name: min(ts) for name, ts in times.items()}
    print(f"max-plus fwd+bwd, fp32, B={B} T={T} D={D}, {torch.get_num_threads()} threads")
    print(f"{'contender':<14}{'best ms':>10}{'median ms':>11}{'x recc torch':>14}")
    for name, ts in times.items():
        median = sorted(ts)[len(ts) // 2]
        ratio = best[name] / best["recc torch"]
        print(f"{name:<14}{1e3 * best[name]:>10.2f}{1e3 * median:>11.2f}{ratio:>14.2f}")


if __name__ == "__main__":
    main()
