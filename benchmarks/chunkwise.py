"""Chunkwise lowering on this CPU: recc's torch path against flash-linear-attention's.

Run:  python benchmarks/chunkwise.py [--quick] [--T 4096] [--repeats 5] [--models ...]
      python benchmarks/chunkwise.py --crossover    # scan vs chunkwise by T

Side by side in one run, interleaved (benchmarks/scan.py's `interleaved`), fp32,
B=2, H=4, T=4096, K=V=64, for each model:
  gated_deltanet  specs/gated_deltanet.rec, normalised keys, beta in (0, 1), log-decays
                  g = logsigmoid(.); peer fla.ops.gated_delta_rule.naive
                  .naive_chunk_gated_delta_rule
  gla             specs/gla.rec, gk = logsigmoid(.) per key channel; peer
                  fla.ops.gla.naive.naive_recurrent_gla (fla-core 0.6.0 has no naive
                  chunk GLA: its step loop is the reference it ships)
  retnet          specs/retnet.rec, gamma per head; peer fla.ops.simple_gla.naive
                  .naive_chunk_simple_gla with g = log(gamma) at every step
and the contenders
  recc chunkwise  recc.compile(spec, backend="torch", strategy="chunkwise")
  fla naive       the peer above (fla-core 0.6.0: `pip install --no-deps fla-core==0.6.0
                  einops`; skipped with a note if it is not installed)
  step by step    recc.compile(spec, backend="interpreter"): the loop over T steps,
                  differentiated by autograd (what a user writes by hand)
Forward, and forward + backward (loss = sum(o * w)). Ratios are "contender time /
recc chunkwise time" (> 1: recc is faster); each time is the median of the rounds.
Outputs of recc and fla are compared (max abs difference) before timing.

--crossover times recc's two forms of GLA (strategy="scan" and "chunkwise", torch
backend) at T = 16 ... 512: the torch backend's rule (CHUNKWISE_FROM_T in
backends/torch/backend.py) comes from this table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import recc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import interleaved  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
F = torch.nn.functional


@dataclass(frozen=True)
class Model:
    name: str
    spec: str
    inputs: Callable[..., dict]  # (B, T, H, K, V, generator) -> tensors by name
    peer: Callable[[], Callable[[dict], torch.Tensor] | None]  # fla's reference, if installed
    peer_name: str


def gated_deltanet_inputs(B, T, H, K, V, g) -> dict:
    return {
        "q": torch.randn(B, T, H, K, generator=g) * K**-0.5,
        "k": F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1),
        "v": torch.randn(B, T, H, V, generator=g),
        "g": F.logsigmoid(torch.randn(B, T, H, generator=g) + 2.0),
        "beta": torch.rand(B, T, H, generator=g),
    }


def gla_inputs(B, T, H, K, V, g) -> dict:
    return {
        "q": torch.randn(B, T, H, K, generator=g) * K**-0.5,
        "k": torch.randn(B, T, H, K, generator=g) * K**-0.5,
        "v": torch.randn(B, T, H, V, generator=g),
        "gk": F.logsigmoid(torch.randn(B, T, H, K, generator=g) + 3.0),
    }


def retnet_inputs(B, T, H, K, V, g) -> dict:
    return {
        "q": torch.randn(B, T, H, K, generator=g) * K**-0.5,
        "k": torch.randn(B, T, H, K, generator=g) * K**-0.5,
        "v": torch.randn(B, T, H, V, generator=g),
        "gamma": 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32)),  # RetNet's per head
    }


def _fla_gated_deltanet():
    try:
        from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule
    except ImportError:
        return None
    # fla scales q by K^-0.5 itself: pass scale=1, the inputs carry it
    return lambda x: naive_chunk_gated_delta_rule(
        x["q"], x["k"], x["v"], x["g"], x["beta"], scale=1.0, output_final_state=True
    )[0]


def _fla_gla():
    try:
        from fla.ops.gla.naive import naive_recurrent_gla
    except ImportError:
        return None
    # naive_recurrent_gla scales q by K^-0.5 itself and takes no scale: undo it
    return lambda x: naive_recurrent_gla(
        x["q"] * x["q"].shape[-1] ** 0.5, x["k"], x["v"], x["gk"], output_final_state=True
    )[0]


def _fla_simple_gla():
    try:
        from fla.ops.simple_gla.naive import naive_chunk_simple_gla
    except ImportError:
        return None

    def run(x: dict) -> torch.Tensor:
        B, T, H, _ = x["q"].shape
        g = torch.log(x["gamma"]).expand(B, T, H)
        return naive_chunk_simple_gla(
            x["q"], x["k"], x["v"], g, output_final_state=True, scale=1.0
        )[0]

    return run


MODELS = {
    m.name: m
    for m in (
        Model(
            "gated_deltanet",
            "gated_deltanet.rec",
            gated_deltanet_inputs,
            _fla_gated_deltanet,
            "fla naive chunk",
        ),
        Model("gla", "gla.rec", gla_inputs, _fla_gla, "fla naive recurrent"),
        Model("retnet", "retnet.rec", retnet_inputs, _fla_simple_gla, "fla naive chunk"),
    )
}


def _forward(fn, x):
    def run():
        with torch.no_grad():
            return fn(**x, check_nan=False)

    return run


def _fwd_bwd(fn, x, w, peer=False):
    def run():
        leaves = {
            k: v.clone().requires_grad_() if v.is_floating_point() else v for k, v in x.items()
        }
        out = fn(leaves) if peer else fn(**leaves, check_nan=False)
        (out * w).sum().backward()

    return run


def table(model: Model, B, T, H, K, V, repeats) -> list[tuple[str, float, float]]:
    spec = str(ROOT / "specs" / model.spec)
    chunkwise = recc.compile(spec, backend="torch", strategy="chunkwise")
    stepwise = recc.compile(spec, backend="interpreter")
    x = model.inputs(B, T, H, K, V, torch.Generator().manual_seed(0))
    w = torch.randn(B, T, H, V, generator=torch.Generator().manual_seed(1))
    peer = model.peer()
    fwd = {"recc chunkwise": _forward(chunkwise, x)}
    both = {"recc chunkwise": _fwd_bwd(chunkwise, x, w)}
    if peer is not None:
        ours, theirs = fwd["recc chunkwise"](), peer(x)
        print(f"  recc vs {model.peer_name}, max |o difference|: {(ours - theirs).abs().max():.2e}")
        fwd[model.peer_name] = lambda: peer(x)
        both[model.peer_name] = _fwd_bwd(peer, x, w, peer=True)
    both["step by step"] = _fwd_bwd(stepwise, x, w)
    rows = []
    for label, contenders, rounds in (
        ("forward", fwd, repeats),
        ("forward + backward", both, max(2, repeats // 2)),
    ):
        times = {k: statistics.median(v) for k, v in interleaved(contenders, rounds).items()}
        base = times["recc chunkwise"]
        for name, seconds in times.items():
            rows.append((f"{label:<18} {name:<19}", seconds, seconds / base))
    return rows


def crossover(B, H, K, V, repeats) -> None:
    spec = str(ROOT / "specs" / "gla.rec")
    scan = recc.compile(spec, backend="torch", strategy="scan")
    chunk = recc.compile(spec, backend="torch", strategy="chunkwise")
    print(
        f"GLA, fp32, B={B}, H={H}, K={K}, V={V}: the scan and chunkwise forms of recc's torch path"
    )
    print(
        f"{'T':>6} {'fwd scan':>10} {'fwd chunk':>10} {'scan/chunk':>10}"
        f" {'f+b scan':>10} {'f+b chunk':>10} {'scan/chunk':>10}"
    )
    for T in (16, 32, 48, 64, 96, 128, 256, 512):
        x = gla_inputs(B, T, H, K, V, torch.Generator().manual_seed(0))
        w = torch.randn(B, T, H, V, generator=torch.Generator().manual_seed(1))
        f = {
            k: statistics.median(v)
            for k, v in interleaved(
                {"scan": _forward(scan, x), "chunk": _forward(chunk, x)}, repeats
            ).items()
        }
        b = {
            k: statistics.median(v)
            for k, v in interleaved(
                {"scan": _fwd_bwd(scan, x, w), "chunk": _fwd_bwd(chunk, x, w)}, repeats
            ).items()
        }
        print(
            f"{T:>6}",
            *(
                f"{r['scan'] * 1e3:8.2f}ms {r['chunk'] * 1e3:8.2f}ms {r['scan'] / r['chunk']:9.2f}x"
                for r in (f, b)
            ),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T=512, 2 rounds")
    parser.add_argument("--T", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--crossover", action="store_true", help="scan vs chunkwise by T (GLA)")
    args = parser.parse_args()
    T, repeats = (512, 2) if args.quick else (args.T, args.repeats)
    B, H, K, V = 2, 4, 64, 64
    if args.crossover:
        crossover(B, H, K, V, max(repeats, 5))
        return
    print(f"fp32, B={B}, H={H}, T={T}, K={K}, V={V}, torch {torch.__version__}")
    for name in args.models:
        model = MODELS[name]
        print(f"\n{name} ({model.spec})")
        if model.peer() is None:
            print("  fla-core not installed: `pip install --no-deps fla-core==0.6.0 einops`")
        print(f"  {'':<38} {'median':>10} {'ratio to recc':>14}")
        for row, seconds, ratio in table(model, B, T, H, K, V, repeats):
            print(f"  {row:<38} {seconds * 1e3:8.2f} ms {ratio:13.2f}x")


if __name__ == "__main__":
    main()
