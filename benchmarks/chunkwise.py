"""Chunkwise lowering on this CPU: recc's torch path against flash-linear-attention's.

Run:  python benchmarks/chunkwise.py [--quick] [--T 4096] [--repeats 5]

Side by side in one run, interleaved (benchmarks/scan.py's `interleaved`), fp32,
B=2, H=4, T=4096, K=V=64, Gated DeltaNet (specs/gated_deltanet.rec) with
normalised keys, beta in (0, 1) and log-decays g = logsigmoid(.):
  recc chunkwise      recc.compile(spec, backend="torch"): the chunkwise algorithm
  fla naive chunk     fla.ops.gated_delta_rule.naive.naive_chunk_gated_delta_rule
                      (fla-core 0.6.0: `pip install --no-deps fla-core==0.6.0 einops`;
                      skipped with a note if it is not installed)
  step by step        recc.compile(spec, backend="interpreter"): the loop over T steps,
                      differentiated by autograd (what a user writes by hand)
Forward, and forward + backward (loss = sum(o * w)). Ratios are "contender time /
recc chunkwise time" (> 1: recc is faster); each time is the median of the rounds.
Outputs of recc and fla are compared (max abs difference) before timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

import recc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import interleaved  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def gated_deltanet_inputs(B: int, T: int, H: int, K: int, V: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g) * K**-0.5
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
    v = torch.randn(B, T, H, V, generator=g)
    decay = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=g) + 2.0)
    beta = torch.rand(B, T, H, generator=g)
    return {"q": q, "k": k, "v": v, "g": decay, "beta": beta}


def fla_naive_chunk():
    try:
        from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule
    except ImportError:
        return None

    def run(x: dict) -> torch.Tensor:
        # fla scales q by K^-0.5 itself: pass scale=1, the inputs carry it
        o, _ = naive_chunk_gated_delta_rule(
            x["q"], x["k"], x["v"], x["g"], x["beta"], scale=1.0, output_final_state=True
        )
        return o

    return run


def table(B: int, T: int, H: int, K: int, V: int, repeats: int) -> list[tuple[str, float]]:
    spec = ROOT / "specs" / "gated_deltanet.rec"
    chunkwise = recc.compile(str(spec), backend="torch")
    stepwise = recc.compile(str(spec), backend="interpreter")
    x = gated_deltanet_inputs(B, T, H, K, V)
    w = torch.randn(B, T, H, V, generator=torch.Generator().manual_seed(1))
    fla = fla_naive_chunk()

    def forward(fn):
        def run():
            with torch.no_grad():
                return fn(**x, check_nan=False)

        return run

    def fwd_bwd(fn):
        def run():
            leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
            out = fn(leaves) if fn is fla else fn(**leaves, check_nan=False)
            (out * w).sum().backward()

        return run

    if fla is not None:
        ours, theirs = forward(chunkwise)(), fla(x)
        print(f"recc vs fla naive chunk, max |o difference|: {(ours - theirs).abs().max():.2e}")
    fwd = {"recc chunkwise": forward(chunkwise)}
    both = {"recc chunkwise": fwd_bwd(chunkwise)}
    if fla is not None:
        fwd["fla naive chunk"] = lambda: fla(x)
        both["fla naive chunk"] = fwd_bwd(fla)
    both["step by step"] = fwd_bwd(stepwise)
    rows = []
    for label, contenders, rounds in (
        ("forward", fwd, repeats),
        ("forward + backward", both, max(2, repeats // 2)),
    ):
        times = {k: statistics.median(v) for k, v in interleaved(contenders, rounds).items()}
        base = times["recc chunkwise"]
        for name, seconds in times.items():
            rows.append((f"{label:<18} {name:<16}", seconds, seconds / base))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T=512, 2 rounds")
    parser.add_argument("--T", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    T, repeats = (512, 2) if args.quick else (args.T, args.repeats)
    B, H, K, V = 2, 4, 64, 64
    print(f"Gated DeltaNet, fp32, B={B}, H={H}, T={T}, K={K}, V={V}, torch {torch.__version__}")
    if fla_naive_chunk() is None:
        print("fla-core not installed: `pip install --no-deps fla-core==0.6.0 einops` to compare")
    print(f"{'':<35} {'median':>10} {'ratio to recc':>14}")
    for name, seconds, ratio in table(B, T, H, K, V, repeats):
        print(f"{name:<35} {seconds * 1e3:8.2f} ms {ratio:13.2f}x")


if __name__ == "__main__":
    main()
