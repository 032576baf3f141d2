"""The Newton-parallel solver against the step loop, torch.nn and a Python loop.

Run:  python benchmarks/newton.py [--quick] [--skip-timing] [--crossover]

One run prints four tables (fp32, this machine's CPU; ratios are "recc's chosen
path time / contender time", < 1: recc is faster):

  iterations   Newton iterations to the fp32 stop rule, the backward's adjoint
               iterations, and the first iteration whose largest change was at
               most 1e-4 (DEER's fp32 atol: where a looser rule would stop), for
               ParaGRU and ParaLSTM (exact Jacobians) and GRU and LSTM
               (quasi-Newton: the diagonal of the dense recurrent Jacobian);
               random weights at trained-like scales (input weights N(0, 1/I),
               diagonal recurrent weights U(-1, 1), dense recurrent weights
               orthogonal times 0.5), T in {1k, 16k}; the largest difference
               from the step loop's outputs.
  paragru      B=4, T=4096, D=256: the Python time loop a user writes, recc's
               chosen path (`recc.compile(spec)`: on a CPU the loop forward, and
               the loop's forward with Newton's adjoint backward for
               forward+backward) and Newton forced
               (`strategy="newton"`), forward and forward+backward.
  dense        GRU and LSTM at B=8, T=1024, D=128 against torch.nn.GRU / LSTM
               (oneDNN): recc's chosen path (the loop; quasi-Newton plans keep
               autograd on a CPU) and Newton forced.
  on paper     T=65,536, D=256, fp32: each strategy's parallel depth (sequential
               steps on the critical path) and the GPU bytes per token it moves,
               counted from the plans (a fused evaluation kernel per iteration,
               a scan of depth 2 log2 T), with the iterations measured above.
`--crossover` prints instead, by T (B=4, D=128), the loop against Newton forward,
and the loop with autograd, the loop with the adjoint backward and Newton
forward+backward: where the torch backend's cost rule on a CPU comes from. Timings are interleaved
(benchmarks/scan.py `interleaved`), best of the rounds.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import torch

import recc
from recc.backends.torch.newton import NewtonFallbackWarning
from recc.signature import bind

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import interleaved  # noqa: E402
from sequential import against_python_loop, against_torch_nn  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs"


def weights(rec, sizes: dict[str, int], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Trained-like scales: input weights N(0, 1/I), diagonal recurrent weights
    U(-1, 1), dense recurrent weights orthogonal times 0.5, biases N(0, 0.1)."""
    found = {}
    for p in rec.params:
        shape = tuple(sizes[d] for d in p.dims)
        if len(shape) == 2 and p.dims[0] == p.dims[1]:
            q, _ = torch.linalg.qr(torch.randn(shape, generator=g))
            found[p.name] = 0.5 * q
        elif len(shape) == 2:
            found[p.name] = torch.randn(shape, generator=g) / shape[1] ** 0.5
        elif p.name.startswith(("A", "C")):
            found[p.name] = torch.rand(shape, generator=g) * 2 - 1
        else:
            found[p.name] = torch.randn(shape, generator=g) * 0.1
    return found


def iteration_rows(Ts: list[int], B: int, D: int) -> list[dict]:
    rows = []
    for name in ("paragru", "paralstm", "gru", "lstm"):
        newton = recc.compile(SPECS / f"{name}.rec", strategy="newton")
        loop = recc.compile(SPECS / f"{name}.rec", strategy="sequential")
        for T in Ts:
            g = torch.Generator().manual_seed(T)
            p = weights(newton.spec, {"I": D, "D": D}, g)
            x = torch.randn(B, T, D, generator=g, requires_grad=True)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NewtonFallbackWarning)
                y = newton(x=x, **p)
                (y * torch.randn(y.shape, generator=g)).sum().backward()
            stats = newton.last_stats
            with torch.no_grad():
                want = loop(x=x, **p)
            rows.append(
                {
                    "spec": name,
                    "T": T,
                    "jacobian": "exact" if newton.plan.newton.exact else "quasi",
                    "iterations": stats.iterations,
                    "to a change <= 1e-4": next(
                        (k + 1 for k, c in enumerate(stats.changes) if c <= 1e-4), "-"
                    ),
                    "adjoint": stats.adjoint_iterations,
                    "fell back": stats.fell_back or (caught and str(caught[0].message)) or "",
                    "max |newton - loop|": float((y.detach() - want).abs().max()),
                }
            )
    return rows


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}")
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r[k]).ljust(widths[k]) for k in keys))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def paragru_rows(B: int, T: int, D: int, repeats: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    chosen = recc.compile(SPECS / "paragru.rec")
    newton = recc.compile(SPECS / "paragru.rec", strategy="newton")
    p = weights(chosen.spec, {"I": D, "D": D}, g)
    paths = {"recc chosen": chosen, "recc newton": newton}
    return against_python_loop(B, T, D, repeats, p, paths, "recc chosen", g)


def dense_rows(name: str, B: int, T: int, D: int, repeats: int) -> list[dict]:
    paths = {
        "recc chosen": recc.compile(SPECS / f"{name}.rec"),
        "recc newton": recc.compile(SPECS / f"{name}.rec", strategy="newton"),
    }
    return against_torch_nn(name, B, T, D, repeats, paths, "recc chosen")


def crossover_rows(names: list[str], Ts: list[int], B: int, D: int, repeats: int) -> list[dict]:
    """By T, forward: the step loop against Newton; forward+backward: the loop with
    autograd, the loop's forward with Newton's adjoint backward, and Newton. Where the
    torch backend's cost rule on a CPU comes from (each path forced: the adjoint
    backward through the solver's `run(bound, forward="loop")`)."""
    rows = []
    for name in names:
        loop = recc.compile(SPECS / f"{name}.rec", strategy="sequential")
        newton = recc.compile(SPECS / f"{name}.rec", strategy="newton")
        solver = newton._executor("torch").solver
        for T in Ts:
            g = torch.Generator().manual_seed(T)
            p = {k: v.requires_grad_() for k, v in weights(loop.spec, {"I": D, "D": D}, g).items()}
            x = torch.randn(B, T, D, generator=g, requires_grad=True)
            w = torch.randn(B, T, D, generator=g)

            def fwd(fn, x=x, p=p):
                def run():
                    with torch.no_grad():
                        fn(x=x, **p)

                return run

            def fwd_bwd(fn, x=x, p=p, w=w):
                def run():
                    (fn(x=x, **p) * w).sum().backward()

                return run

            def adjoint(x=x, p=p, w=w, spec=newton.spec, solver=solver):
                outputs, _ = solver.run(bind(spec, {"x": x, **p}, None), forward="loop")
                (outputs["h"] * w).sum().backward()

            forward = interleaved({"loop": fwd(loop), "newton": fwd(newton)}, repeats)
            backward = interleaved(
                {"loop": fwd_bwd(loop), "adjoint": adjoint, "newton": fwd_bwd(newton)}, repeats
            )
            best = {k: min(v) for k, v in backward.items()}
            rows.append(
                {
                    "spec": name,
                    "T": T,
                    "jacobian": "exact" if newton.plan.newton.exact else "quasi",
                    "loop fwd": min(forward["loop"]),
                    "newton fwd": min(forward["newton"]),
                    "loop f+b": best["loop"],
                    "loop+adjoint f+b": best["adjoint"],
                    "newton f+b": best["newton"],
                    "loop / loop+adjoint": best["loop"] / best["adjoint"],
                }
            )
    return rows


def paper_rows(iterations: list[dict], T: int = 65_536, D: int = 256) -> list[dict]:
    """Depth and bytes per token (fp32) of each strategy, from the plans' structure.

    Sequential (a fused kernel, FlashRNN-style): depth T; reads the step's per-step
    inputs and writes the states once. Newton, per iteration: one fused evaluation
    kernel (reads the step's inputs and the old states; writes the multipliers and
    the offsets), one scan (reads multipliers and offsets, writes the states; depth
    2 log2 T, up-sweep and down-sweep), one convergence check (reads old and new
    states); iterations: the largest measured above for the spec."""
    most: dict[str, int] = {}
    for r in iterations:
        most[r["spec"]] = max(most.get(r["spec"], 0), r["iterations"])
    rows = []
    for name, k in most.items():
        newton = recc.compile(SPECS / f"{name}.rec", strategy="newton").plan.newton
        step = newton.step
        per_step_inputs = sum(1 for i in step.inputs)
        states, blocks = len(step.states), len(newton.blocks)
        sequential_bytes = 4 * D * (per_step_inputs + states)
        iteration_bytes = (
            4
            * D
            * ((per_step_inputs + states + blocks + states) + (blocks + 2 * states) + 2 * states)
        )
        depth = 2 * math.ceil(math.log2(T))
        rows.append(
            {"spec": name, "strategy": "sequential", "depth": T, "bytes/token": sequential_bytes}
        )
        rows.append(
            {
                "spec": name,
                "strategy": f"newton x{k}",
                "depth": k * (depth + 1),
                "bytes/token": k * iteration_bytes,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter sequences, fewer rounds")
    parser.add_argument("--skip-timing", action="store_true", help="iterations and paper only")
    parser.add_argument(
        "--crossover", action="store_true", help="only the loop against Newton by T (B=4, D=128)"
    )
    args = parser.parse_args()
    if args.crossover:
        names = ["paragru", "paralstm", "indrnn", "gru", "lstm"]
        Ts = [32, 128, 512, 2048]
        print_rows(
            "crossover: B=4, D=128, fp32 (seconds)",
            crossover_rows(names, Ts, 4, 128, 3),
        )
        return
    scale = 8 if args.quick else 1
    repeats = 3 if args.quick else 5
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    Ts = [1024 // scale, 16384 // scale]
    iterations = iteration_rows(Ts, B=2, D=64)
    print_rows(f"iterations to the fp32 stop rule (B=2, D=64, T in {Ts})", iterations)
    if not args.skip_timing:
        T = 4096 // scale
        print_rows(
            f"paragru: B=4, T={T}, D=256 (ratio: recc chosen / contender)",
            paragru_rows(4, T, 256, repeats),
        )
        T = 1024 // scale
        rows = dense_rows("gru", 8, T, 128, repeats) + dense_rows("lstm", 8, T, 128, repeats)
        print_rows(f"dense cells: B=8, T={T}, D=128 (ratio: recc chosen / contender)", rows)
    print_rows("on paper: T=65,536, D=256, fp32", paper_rows(iterations))


if __name__ == "__main__":
    main()
