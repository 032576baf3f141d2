"""Chunkwise forward kernels per token: recc's generated Triton against fla's hand-written Triton.

Run:  python benchmarks/chunk_traffic.py [--T 256] [--K 64] [--V 64] [--models gla retnet]
                                         [--h0 random|zero]

No GPU needed: both sides run in Triton's CPU interpreter (TRITON_INTERPRET=1, set
below before Triton is imported) and recc.testing.triton_traffic counts every global
load, store and tl.dot of every kernel launched by one forward call. Same inputs to
both, B=1, H=1, T=256, K=V=64, fp32, an initial state (random by default) and the
final state returned by both:
  gla     recc: ChunkKernel of specs/gla.rec; fla: fla.ops.gla.chunk_gla (scale=1,
          g = gk = logsigmoid(randn + 3) per key channel)
  retnet  recc: ChunkKernel of specs/retnet.rec, gamma in (0.8, 0.99) per head;
          fla: fla.ops.simple_gla.chunk_simple_gla (scale=1) with g = log(gamma) at
          every step ([B, T, H]), and again with g_gamma = log(gamma) ([H], fla's
          per-head constant decay, which reads no gate tensor)
For each it prints, per token (divided by B*T*H): bytes read, written, their sum, the
distinct bytes touched (re-reads of the same address not counted again), tl.dot calls
and dot FLOPs (2 M N K each, padded tiles included), the ratios recc / fla of total
bytes and dot FLOPs (<= 1: recc moves fewer bytes / does fewer dot FLOPs), the
minimum (every input, param and initial state read once, every output and final state
written once), and the largest |difference| between the two sides' outputs and final
states.

Caveats:
* These are interpreter counts of global-memory accesses, not GPU time: caches,
  coalescing, occupancy, and the cost of elementwise work and of launches are not seen.
  Traffic to intermediates (fla's cumulative gates, A and per-chunk states; recc's
  per-chunk states) is counted like any other global access.
* fla runs from a temporary, rewritten copy of the installed package (the installed
  one is not touched), made at start-up and deleted at exit:
  - `x.to(tl.int64)` on a bare name -> `tl.cast(x, tl.int64)` (the interpreter rejects
    `.to` on a loop variable);
  - every `@triton.autotune(...)` / `@fla_cache_autotune(...)` -> an autotuner that runs
    one config without benchmarking: after fla's own pruning, the one with the largest
    tiles whose BK is <= K and BV <= V rounded up to powers of two (other block sizes
    <= the larger of the two): the fewest programs and re-reads, no padded dots where
    fla offers a tile that fits (a GPU autotuner may pick smaller tiles, which read
    more); the chosen tiles are printed;
  - `get_all_max_shared_mem()` reports an H100's shared memory, so fla's module-level
    tile lists are those it uses on Hopper (on CPU it would fall back to small tiles).
  fla also warns "Triton is not supported on current platform, roll back to CPU" at
  import (no GPU driver); its Triton kernels run in the interpreter all the same.
* fla is fla-core 0.6.0 (`pip install --no-deps fla-core==0.6.0 einops`); without it
  only recc's figures are printed, with a line saying why fla's are missing.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
ROOT = Path(__file__).resolve().parent.parent

import torch  # noqa: E402

from recc.analysis import analyze  # noqa: E402
from recc.backends.triton.chunk_launch import ChunkKernel  # noqa: E402
from recc.ir import load  # noqa: E402
from recc.lowering import plan as lowering_plan  # noqa: E402
from recc.signature import bind  # noqa: E402
from recc.testing.triton_interpreter import install_fast_scan  # noqa: E402
from recc.testing.triton_traffic import Traffic, count_traffic  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chunkwise import gla_inputs  # noqa: E402  (the same GLA inputs as the timing benchmark)

F = torch.nn.functional

# The single-config autotuner that replaces fla's (written into the copy as
# fla/_interp_autotune.py). `CAP` is set by `prepare_fla`; `CHOSEN` records the tiles
# each kernel ran with.
ONE_CONFIG = '''\
"""Written by recc's benchmarks/chunk_traffic.py: autotune without benchmarking."""
from triton.runtime.autotuner import Autotuner

CAP = 64
CAPS = {}  # per block-size name (BK, BV): its own cap
CHOSEN = {}


def _sizes(config):
    return {n: v for n, v in config.kwargs.items() if type(v) is int}


def _tile(config):
    p = 1
    for v in _sizes(config).values():
        p *= v
    return p


class OneConfig(Autotuner):
    def prune_configs(self, kwargs):
        configs = super().prune_configs(kwargs)
        fits = [c for c in configs if all(v <= CAPS.get(n, CAP) for n, v in _sizes(c).items())]
        return [max(fits, key=_tile) if fits else min(configs, key=_tile)]

    def run(self, *args, **kwargs):
        ret = super().run(*args, **kwargs)
        CHOSEN[self.base_fn.__name__] = _sizes(self.best_config)
        return ret


def autotune(configs, key=None, prune_configs_by=None, reset_to_zero=None,
             restore_value=None, pre_hook=None, post_hook=None, **ignored):
    def decorator(fn):
        return OneConfig(fn, fn.arg_names, configs, key or [], reset_to_zero, restore_value,
                         pre_hook=pre_hook, post_hook=post_hook,
                         prune_configs_by=prune_configs_by)
    return decorator
'''

# (pattern, replacement, files it must match in at least once)
REWRITES = (
    (
        r"(?<![\w.])([A-Za-z_]\w*)\.to\(tl\.int64\)",
        r"tl.cast(\1, tl.int64)",
        "ops/common/chunk_h.py",
    ),
    (
        r"@(?:triton\.autotune|fla_cache_autotune)\(",
        "@__import__('fla._interp_autotune')._interp_autotune.autotune(",
        "ops/gla/chunk.py",
    ),
    (
        r"(def get_all_max_shared_mem\(\):\n)",
        r"\1    return [Backend.HOPPER.value]  # recc's chunk_traffic.py: tiles as on Hopper\n",
        "utils/hardware.py",
    ),
)


def prepare_fla(cap: int, caps: dict[str, int]):
    """Import fla from a rewritten temporary copy; (module of the autotuner, None) or
    (None, why fla cannot run)."""
    import importlib.util

    spec = importlib.util.find_spec("fla")
    if spec is None or spec.origin is None:
        return None, "fla is not installed (pip install --no-deps fla-core==0.6.0 einops)"
    src = Path(spec.origin).parent
    tmp = Path(tempfile.mkdtemp(prefix="fla_interp_"))
    atexit.register(shutil.rmtree, tmp, True)
    dst = tmp / "fla"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    counts = [0] * len(REWRITES)
    for path in dst.rglob("*.py"):
        text = path.read_text()
        new = text
        for i, (pattern, repl, must) in enumerate(REWRITES):
            new, n = re.subn(pattern, repl, new)
            if path.relative_to(dst).as_posix() == must and n:
                counts[i] += n
        if new != text:
            path.write_text(new)
    missing = [REWRITES[i][0] for i, n in enumerate(counts) if not n]
    if missing:
        return None, f"fla at {src} changed: the rewrites {missing} found nothing to rewrite"
    (dst / "_interp_autotune.py").write_text(ONE_CONFIG)
    sys.path.insert(0, str(tmp))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Triton is not supported on current platform")
        import fla
        import fla._interp_autotune as tuner
        import fla.ops.gla  # noqa: F401
        import fla.ops.simple_gla  # noqa: F401
    if not fla.__file__.startswith(str(tmp)):
        return None, f"imported fla from {fla.__file__}, not from the rewritten copy"
    tuner.CAP, tuner.CAPS = cap, caps
    return tuner, None


@dataclass(frozen=True)
class Model:
    name: str
    spec: str
    inputs: Callable[..., dict]  # (B, T, H, K, V, generator) -> recc's tensors by name
    peers: Callable[[dict, torch.Tensor], dict]  # (tensors, h0) -> {label: fla forward}


def retnet_inputs(B, T, H, K, V, g) -> dict:
    return {
        "q": torch.randn(B, T, H, K, generator=g) * K**-0.5,
        "k": torch.randn(B, T, H, K, generator=g) * K**-0.5,
        "v": torch.randn(B, T, H, V, generator=g),
        "gamma": 0.8 + 0.19 * torch.rand(H, generator=g),
    }


def gla_peers(x: dict, h0: torch.Tensor) -> dict:
    from fla.ops.gla import chunk_gla

    def run():
        return chunk_gla(
            x["q"], x["k"], x["v"], x["gk"], scale=1.0, initial_state=h0, output_final_state=True
        )

    return {"fla": run}


def retnet_peers(x: dict, h0: torch.Tensor) -> dict:
    from fla.ops.simple_gla import chunk_simple_gla

    B, T, H, _ = x["q"].shape
    log_gamma = torch.log(x["gamma"])
    g = log_gamma.expand(B, T, H).contiguous()

    def with_g():
        return chunk_simple_gla(
            x["q"], x["k"], x["v"], g=g, scale=1.0, initial_state=h0, output_final_state=True
        )

    def with_g_gamma():
        return chunk_simple_gla(
            x["q"],
            x["k"],
            x["v"],
            g_gamma=log_gamma,
            scale=1.0,
            initial_state=h0,
            output_final_state=True,
        )

    return {"fla": with_g, "fla g_gamma": with_g_gamma}


MODELS = {
    "gla": Model("gla", "gla.rec", gla_inputs, gla_peers),
    "retnet": Model("retnet", "retnet.rec", retnet_inputs, retnet_peers),
}


def nbytes(*xs: torch.Tensor) -> int:
    return sum(x.numel() * x.element_size() for x in xs)


@dataclass(frozen=True)
class Row:
    label: str
    traffic: Traffic
    diff: float | None  # max |o - o_recc| and |final - final_recc|; None for recc itself


def measure(model: Model, args, tuner) -> tuple[list[Row], float, str]:
    B, H, T, K, V = 1, 1, args.T, args.K, args.V
    g = torch.Generator().manual_seed(0)
    tensors = model.inputs(B, T, H, K, V, g)
    h0 = torch.randn(B, H, K, V, generator=g) * 0.1
    if args.h0 == "zero":
        h0 = torch.zeros_like(h0)

    rec = load(ROOT / "specs" / model.spec)
    kernel = ChunkKernel(lowering_plan(rec, analyze(rec)).chunk)
    bound = bind(rec, tensors, {"S": h0})
    with torch.no_grad(), count_traffic() as traffic:
        outputs, finals = kernel(bound)
    o, final = outputs["o"], finals["S"]
    rows = [Row("recc", traffic, None)]
    minimum = nbytes(*tensors.values(), h0, o, final)

    note = ""
    if tuner is None:
        return rows, minimum / (B * T * H), note
    for label, run in model.peers(tensors, h0).items():
        tuner.CHOSEN.clear()
        with torch.no_grad(), count_traffic() as traffic:
            o_fla, final_fla = run()
        diff = max((o_fla - o).abs().max().item(), (final_fla - final).abs().max().item())
        rows.append(Row(label, traffic, diff))
        tiles = ", ".join(
            f"{name}({', '.join(f'{k}={v}' for k, v in sizes.items()) or '-'})"
            for name, sizes in tuner.CHOSEN.items()
        )
        note += f"  {label} tiles: {tiles}\n"
    return rows, minimum / (B * T * H), note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=256)
    parser.add_argument("--K", type=int, default=64)
    parser.add_argument("--V", type=int, default=64)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["gla", "retnet"])
    parser.add_argument("--h0", choices=["random", "zero"], default="random")
    args = parser.parse_args()
    install_fast_scan()
    # padded lanes compute garbage (e.g. 0/0) that is masked off; numpy warns about it
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    caps = {
        "BK": max(16, 1 << (args.K - 1).bit_length()),
        "BV": max(16, 1 << (args.V - 1).bit_length()),
    }
    cap = max(caps.values())
    try:
        tuner, why = prepare_fla(cap, caps)
    except Exception as err:  # noqa: BLE001 - any failure of the copy or import: report it
        tuner, why = None, f"{type(err).__name__}: {err}"
    tokens = args.T  # B = H = 1
    print(
        f"B=1 H=1 T={args.T} K={args.K} V={args.V} fp32, h0 {args.h0}; "
        f"per token (/ B*T*H = {tokens}), Triton interpreter counts"
    )
    if why:
        print(f"fla's figures are missing: {why}")
    head = (
        f"{'model':7} {'impl':12} {'read B':>9} {'written B':>9} {'total B':>9} "
        f"{'unique B':>9} {'dots':>7} {'dot FLOPs':>10} {'B r/f':>8} {'FLOPs r/f':>11} "
        f"{'max |diff|':>10}"
    )
    print(head)
    print("-" * len(head))
    notes = []
    for name in args.models:
        rows, minimum, note = measure(MODELS[name], args, tuner)
        recc = rows[0].traffic
        for row in rows:
            t = row.traffic
            total = t.bytes_read + t.bytes_written
            unique = t.unique_bytes_read + t.unique_bytes_written
            ratios = f"{'':8} {'':11}"
            if row.diff is not None:
                ratio_b = (recc.bytes_read + recc.bytes_written) / total
                ratio_f = recc.dot_flops / t.dot_flops if t.dot_flops else float("nan")
                ratios = f"{ratio_b:8.3f} {ratio_f:11.3f}"
            diff = "" if row.diff is None else f"{row.diff:10.2e}"
            print(
                f"{name:7} {row.label:12} {t.bytes_read / tokens:9.1f} "
                f"{t.bytes_written / tokens:9.1f} {total / tokens:9.1f} {unique / tokens:9.1f} "
                f"{t.dots / tokens:7.3f} {t.dot_flops / tokens:10.1f} {ratios} {diff:>10}".rstrip()
            )
        print(f"{name:7} {'minimum':12} {'':9} {'':9} {minimum:9.1f}")
        if note:
            notes.append(f"{name}:\n{note}")
    print("r/f: recc / fla (<= 1: recc moves fewer bytes / does fewer dot FLOPs)")
    if notes:
        print(
            f"fla's autotuned kernels ran with one config each (largest tiles with BK <= "
            f"{caps['BK']}, BV <= {caps['BV']}, others <= {cap}):"
        )
        print("".join(notes), end="")


if __name__ == "__main__":
    main()
