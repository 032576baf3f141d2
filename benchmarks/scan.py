"""Scan lowering on this CPU: recc's torch backend against what a user would write.

Run:  python benchmarks/scan.py [--quick] [--no-compile]

Side by side in one run, fp32, B=4, T=4096, D=256, minGRU
(h = (1 - z) * h + z * v, z = sigmoid(k)); every contender computes the gates
from the same raw inputs k, v and returns every h_t:
  python loop        gates up front, then `for t: h = a[:, t]*h + b[:, t]; out[:, t] = h`
  torch assoc. scan  torch._higher_order_ops.associative_scan(combine_mode="generic")
                     under torch.compile (compile time excluded)
  jax assoc. scan    jax.lax.associative_scan, jitted (if jax is installed)
  recc torch         recc.compile(spec, backend="torch")
  recc torch+compile recc.compile(spec, backend="torch", torch_compile=True)
                     (compile time excluded, as for the compiled peer)
Forward, and forward+backward (loss = sum(out * w)) where the contender has
autograd. Ratios are "contender time / recc time" (> 1: recc is faster), one
column against each recc path.
The floor is the bytes that must move (k and v read once, out written once)
over this machine's measured copy bandwidth.

Then Mamba S6 (N = 16): peak resident memory of the forward pass, and of
forward + backward, each measured in a fresh subprocess, against the size of
the [B, T, D, N] state history. glibc keeps freed large blocks in its heap
(its mmap threshold grows with use), which inflates the resident size well
past the live tensors; the probes run with MALLOC_MMAP_THRESHOLD_=65536 so
that freed tensors leave the resident set and the peak measures live memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

import recc

ROOT = Path(__file__).resolve().parent.parent


def best_of(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def copy_bandwidth(nbytes: int) -> float:
    """Bytes per second of a large out-of-cache copy (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    seconds = best_of(lambda: dst.copy_(src), 10)
    return 2 * nbytes / seconds


def python_loop(k, v, w=None):
    z = torch.sigmoid(k)
    a, b = 1 - z, z * v
    h = torch.zeros(k.shape[0], k.shape[2], dtype=k.dtype)
    outs = []
    for t in range(k.shape[1]):
        h = a[:, t] * h + b[:, t]
        outs.append(h)
    out = torch.stack(outs, 1)
    if w is not None:
        (out * w).sum().backward()
    return out


def make_torch_assoc_scan():
    from torch._higher_order_ops.associative_scan import associative_scan

    def combine(x, y):
        return (x[0] * y[0], y[0] * x[1] + y[1])

    @torch.compile
    def scan(k, v):
        z = torch.sigmoid(k)
        return associative_scan(combine, (1 - z, z * v), dim=1, combine_mode="generic")[1]

    return scan


def make_jax_scan():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None

    def combine(x, y):
        return (x[0] * y[0], y[0] * x[1] + y[1])

    @jax.jit
    def scan(k, v):
        z = jax.nn.sigmoid(k)
        return jax.lax.associative_scan(combine, (1 - z, z * v), axis=1)[1]

    def run(k, v):
        return scan(k, v).block_until_ready()

    return run, jnp


def interleaved(contenders: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every contender, taken round-robin (one call of
    each per round, after a warm-up call each) so that a slow phase of this
    shared machine hits all of them alike. The order is shuffled every round:
    a contender that leaves threads spinning (XLA's pool does) or caches cold
    must not always slow down the same neighbour."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            fn = contenders[name]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def mingru_table(B: int, T: int, D: int, repeats: int, compile_peers: bool) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    k = torch.randn(B, T, D, generator=g)
    v = torch.randn(B, T, D, generator=g)
    w = torch.randn(B, T, D, generator=g)
    spec = ROOT / "specs" / "mingru.rec"
    reference = python_loop(k, v)
    eager = recc.compile(spec, backend="torch")
    forward = {"recc torch": lambda: eager(k=k, v=v)}
    recc_paths = {"recc torch": eager}
    if compile_peers:
        fast = recc.compile(spec, backend="torch", torch_compile=True)
        recc_paths["recc torch+compile"] = fast
        forward["recc torch+compile"] = lambda: fast(k=k, v=v)
    forward["python loop"] = lambda: python_loop(k, v)
    if compile_peers:
        scan = make_torch_assoc_scan()
        forward["torch assoc. scan (compiled)"] = lambda: scan(k, v)
    jax_scan = make_jax_scan()
    if jax_scan is not None:
        run, jnp = jax_scan
        kj, vj = jnp.asarray(k.numpy()), jnp.asarray(v.numpy())
        forward["jax assoc. scan (jit)"] = lambda: run(kj, vj)
    for name, fn in forward.items():  # every contender computes the same thing
        if not name.startswith("jax"):
            torch.testing.assert_close(fn(), reference, rtol=1e-4, atol=1e-4, msg=name)

    kg, vg = k.clone().requires_grad_(), v.clone().requires_grad_()

    def fwd_bwd(path):
        def run_once():
            kg.grad = vg.grad = None
            (path(k=kg, v=vg) * w).sum().backward()

        return run_once

    def loop_fwd_bwd():
        kg.grad = vg.grad = None
        python_loop(kg, vg, w)

    backward = {name: fwd_bwd(path) for name, path in recc_paths.items()}
    backward["python loop"] = loop_fwd_bwd

    rows = []
    # autograd through the Python loop takes seconds a call: fewer rounds there
    passes = (("forward", forward, repeats), ("fwd+bwd", backward, max(3, repeats // 3)))
    for pass_name, contenders, rounds in passes:
        for name, seconds in interleaved(contenders, rounds).items():
            ordered = sorted(seconds)
            rows.append(
                {
                    "contender": name,
                    "pass": pass_name,
                    "seconds": ordered[0],
                    "median": ordered[len(ordered) // 2],
                }
            )
    if jax_scan is None:
        rows.append({"contender": "jax assoc. scan (jit)", "pass": "forward", "seconds": None})
    bases = {
        (row["contender"], row["pass"]): row["seconds"]
        for row in rows
        if row["contender"] in recc_paths
    }
    floor = 3 * B * T * D * 4 / copy_bandwidth(64 * 2**20)
    rows.append({"contender": "memory floor", "pass": "forward", "seconds": floor})
    for row in rows:
        for path in ("recc torch", "recc torch+compile"):
            base = bases.get((path, row["pass"]))
            ok = row["seconds"] is not None and base is not None
            row[path] = row["seconds"] / base if ok else None
    return rows


MEMORY_PROBE = """
import json, sys, threading, time, torch, recc
B, T, D, N = map(int, sys.argv[1:5])
backward = sys.argv[6] == "backward"

def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

g = torch.Generator().manual_seed(0)
fn = recc.compile("specs/mamba_s6.rec", backend=sys.argv[5])
sizes = dict(D=D, N=N)
args = {i.name: torch.randn(B, T, *[sizes[d] for d in i.dims], generator=g) for i in fn.spec.inputs}
args.update({p.name: -torch.rand(*[sizes[d] for d in p.dims], generator=g) for p in fn.spec.params})
if backward:
    args = {k: v.requires_grad_() for k, v in args.items()}
# a warm-up call on separate small leaves (so that no .grad exists before the run)
small = {
    k: (v[:, :8] if k in {i.name for i in fn.spec.inputs} else v).detach().requires_grad_(backward)
    for k, v in args.items()
}
with torch.set_grad_enabled(backward):
    fn(**small).sum().backward() if backward else fn(**small)  # loads kernels and threads
peak, done = [0], [False]

def sample() -> None:
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)

base = rss()
thread = threading.Thread(target=sample)
thread.start()
with torch.set_grad_enabled(backward):
    y = fn(**args)
    if backward:
        y.sum().backward()
done[0] = True
thread.join()
print(json.dumps({"peak_increase_bytes": max(peak[0], rss()) - base}))
"""


def mamba_memory(B: int, T: int, D: int, N: int) -> dict:
    peaks = {}
    for mode in ("forward", "backward"):
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(B), str(T), str(D), str(N), "torch", mode],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
        )
        peaks[mode] = json.loads(result.stdout)["peak_increase_bytes"]
    return {
        "shape": f"B={B} T={T} D={D} N={N}",
        "peak_increase_MB": peaks["forward"] / 2**20,
        "peak_increase_backward_MB": peaks["backward"] / 2**20,
        "state_history_MB": B * T * D * N * 4 / 2**20,
        "outputs_MB": B * T * D * 4 / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T=1024 and fewer repeats")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile peer")
    args = parser.parse_args()
    B, T, D = 4, (1024 if args.quick else 4096), 256
    repeats = 5 if args.quick else 15
    print(f"minGRU forward/backward, fp32, B={B} T={T} D={D}, {torch.get_num_threads()} threads")
    rows = mingru_table(B, T, D, repeats, not args.no_compile)
    print("contenders interleaved round-robin; best and median per contender; ratios of bests")
    header = f"{'contender':30} {'pass':8} {'ms':>9} {'median':>9}"
    print(f"{header} {'x recc torch':>13} {'x +compile':>11}")
    for row in rows:
        ms = "n/a" if row["seconds"] is None else f"{row['seconds'] * 1e3:9.2f}"
        med = f"{row['median'] * 1e3:9.2f}" if row.get("median") else ""
        ms = f"{ms:>9} {med:>9}"
        ratios = "".join(
            f" {'':>{w}}" if row[p] is None else f" {row[p]:{w}.2f}"
            for p, w in (("recc torch", 13), ("recc torch+compile", 11))
        )
        note = "  (not installed)" if row["seconds"] is None else ""
        print(f"{row['contender']:30} {row['pass']:8} {ms:>9}{ratios}{note}")
    mem = mamba_memory(B=4, T=T, D=256, N=16)
    print(f"\nMamba S6 forward memory ({mem['shape']}, torch backend, fresh process):")
    print(f"  peak RSS increase        {mem['peak_increase_MB']:8.1f} MB")
    print(f"    forward + backward     {mem['peak_increase_backward_MB']:8.1f} MB")
    print(f"  the output y [B, T, D]   {mem['outputs_MB']:8.1f} MB")
    print(f"  [B, T, D, N] states      {mem['state_history_MB']:8.1f} MB (never materialised)")


if __name__ == "__main__":
    main()
