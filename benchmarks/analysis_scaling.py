"""How the analysis (`recc.compile`'s parse + classify + canonical form) scales with a spec's size.

Run:  python benchmarks/analysis_scaling.py [--quick]

Each family grows one dimension of a spec and times `analyze(load(text))`
(best of --repeats runs, in this process):
  states    n independent vector states  h_i' = 0.5 * h_i + x
  lets      a chain of n lets            a_i = a_{i-1} * 0.9 + x, update reads a_{n-1}
  nesting   n nested calls               h' = tanh(tanh(... tanh(h))) + x
  matmuls   n matrix products            h' = tanh(W @ W @ ... @ W @ h + x)
  rank      a state with n dims          h[D0, ..., D_{n-1}]' = tanh(h * x) + x
Specs past recc's documented nesting limit (recc.ir.build.MAX_NESTING) are
refused with a RecError; the table says so instead of a time. The last
column is the time per unit of size relative to the family's first row:
about 1 means linear growth.
"""

from __future__ import annotations

import argparse
import sys
import time

from sympy.core.cache import clear_cache

from recc.analysis import analyze
from recc.errors import RecError
from recc.ir import load


def states(n: int) -> str:
    body = "\n".join(
        f"  state h{i}[D] = 0\n  update h{i} = 0.5 * h{i} + x\n  output h{i}" for i in range(n)
    )
    return f"recurrence many {{\n  dims D\n  input x[D]\n{body}\n}}\n"


def lets(n: int) -> str:
    chain = "".join(f"  let a{i} = a{i - 1} * 0.9 + x\n" for i in range(1, n))
    return (
        "recurrence chain {\n  dims D\n  input x[D]\n  state h[D] = 0\n  let a0 = sigmoid(x)\n"
        f"{chain}  update h = 0.5 * h + a{n - 1}\n  output h\n}}\n"
    )


def nesting(n: int) -> str:
    expr = "h"
    for _ in range(n):
        expr = f"tanh({expr})"
    return (
        "recurrence nested {\n  dims D\n  input x[D]\n  state h[D] = 0\n"
        f"  update h = {expr} + x\n  output h\n}}\n"
    )


def matmuls(n: int) -> str:
    product = " @ ".join(["W"] * n)
    return (
        "recurrence powers {\n  dims D\n  input x[D]\n  param W[D, D]\n  state h[D] = 0\n"
        f"  update h = tanh({product} @ h + x)\n  output h\n}}\n"
    )


def rank(n: int) -> str:
    dims = ", ".join(f"D{i}" for i in range(n))
    return (
        f"recurrence wide {{\n  dims {dims}\n  input x[{dims}]\n  state h[{dims}] = 0\n"
        "  update h = tanh(h * x) + x\n  output h\n}\n"
    )


FAMILIES = {
    "states": (states, [10, 100, 300, 1000], [10, 100]),
    "lets": (lets, [10, 30, 60, 99, 150], [10, 30]),
    "nesting": (nesting, [10, 25, 50, 100, 150, 250], [10, 25]),
    "matmuls": (matmuls, [2, 4, 8, 12, 24], [2, 8]),
    "rank": (rank, [1, 2, 3, 4, 5], [1, 3]),
}


def time_analysis(source: str, repeats: int) -> float | str:
    best = float("inf")
    for _ in range(repeats):
        clear_cache()  # sympy memoises: every run starts cold
        start = time.perf_counter()
        try:
            analyze(load(source))
        except RecError as err:
            return "RecError: " + str(err).splitlines()[0].split(": ", 1)[-1][:60]
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the two smallest sizes only")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"{'family':8}  {'size':>5}  {'analysis':>10}  {'per unit vs first':>17}")
    for family, (make, sizes, quick) in FAMILIES.items():
        base = None
        for n in quick if args.quick else sizes:
            seconds = time_analysis(make(n), args.repeats)
            if isinstance(seconds, str):
                print(f"{family:8}  {n:5d}  {seconds}")
                continue
            per_unit = seconds / n
            base = base or per_unit
            print(f"{family:8}  {n:5d}  {seconds:9.3f}s  {per_unit / base:17.2f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
