"""Nonlinear recurrences on this CPU: recc's sequential loop against torch.nn and the
interpreter it replaces.

Run:  python benchmarks/sequential.py [--quick] [--no-compile] [--no-interpreter]

Side by side in one run, interleaved, fp32, the zoo's gru / lstm / elman at
B=8, T=1024, I=D=128 (issue 9's shapes), with the same weights as
torch.nn.GRU / LSTM / RNN (oneDNN's fused cells):
  torch.nn           the module's forward (and backward)
  recc torch         recc.compile(spec): the sequential loop, state-free work
                     (input projections) for all steps at once, the recurrent
                     products of one state stacked into one matmul, autograd
                     through the loop for the backward
  recc torch+compile the same with its step under torch.compile (compile time
                     excluded)
  recc interpreter   the reference loop (what these specs ran before)
and ParaGRU (diagonal recurrent weights) at B=4, T=4096, D=256 against the
Python time loop a user would write (input projections hoisted by hand).
Forward, and forward+backward (loss = sum(out * w)). Ratios are
"recc torch time / contender time" (< 1: recc is faster); every contender's
outputs are checked against torch.nn's (or the hand loop's) first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import recc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import interleaved  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs"


def gru_weights(module: torch.nn.GRU) -> dict[str, torch.Tensor]:
    names = {}
    for kind, w in (("W_i", module.weight_ih_l0), ("W_h", module.weight_hh_l0)):
        names.update(zip((f"{kind}r", f"{kind}z", f"{kind}n"), w.chunk(3)))
    for kind, b in (("b_i", module.bias_ih_l0), ("b_h", module.bias_hh_l0)):
        names.update(zip((f"{kind}r", f"{kind}z", f"{kind}n"), b.chunk(3)))
    return names


def lstm_weights(module: torch.nn.LSTM) -> dict[str, torch.Tensor]:
    names = {}
    for gate, w_i, w_h, b_i, b_h in zip(
        "ifgo",
        module.weight_ih_l0.chunk(4),
        module.weight_hh_l0.chunk(4),
        module.bias_ih_l0.chunk(4),
        module.bias_hh_l0.chunk(4),
    ):
        names.update({f"W_i{gate}": w_i, f"W_h{gate}": w_h, f"b_i{gate}": b_i, f"b_h{gate}": b_h})
    return names


def rnn_weights(module: torch.nn.RNN) -> dict[str, torch.Tensor]:
    return {
        "W_ih": module.weight_ih_l0,
        "W_hh": module.weight_hh_l0,
        "b_ih": module.bias_ih_l0,
        "b_hh": module.bias_hh_l0,
    }


MODELS = {
    "gru": (torch.nn.GRU, gru_weights),
    "lstm": (torch.nn.LSTM, lstm_weights),
    "elman": (torch.nn.RNN, rnn_weights),
}


def rows_of(name: str, times: dict[str, list[float]], base: str, pass_name: str) -> list[dict]:
    best = {k: min(v) for k, v in times.items()}
    return [
        {"spec": name, "pass": pass_name, "contender": k, "seconds": s, "ratio": best[base] / s}
        for k, s in best.items()
    ]


def dense_table(B, T, D, repeats, compile_step, interpreter) -> list[dict]:
    rows = []
    for name in MODELS:
        rows += dense_rows(name, B, T, D, repeats, compile_step, interpreter)
    return rows


def dense_rows(name, B, T, D, repeats, compile_step, interpreter) -> list[dict]:
    paths = {"recc torch": recc.compile(SPECS / f"{name}.rec", backend="torch")}
    if compile_step:
        paths["recc torch+compile"] = recc.compile(
            SPECS / f"{name}.rec", backend="torch", torch_compile=True
        )
    if interpreter:
        paths["recc interpreter"] = recc.compile(SPECS / f"{name}.rec", backend="interpreter")
    return against_torch_nn(name, B, T, D, repeats, paths, "recc torch")


def against_torch_nn(name, B, T, D, repeats, paths: dict, base: str) -> list[dict]:
    """The zoo's `name` (gru, lstm, elman) through each of `paths` (recc.compile'd
    functions by label) against torch.nn's module with the same weights, forward and
    forward+backward; ratios to `base`'s time. Outputs are checked first."""
    module_type, weights_of = MODELS[name]
    torch.manual_seed(0)
    module = module_type(D, D, batch_first=True)
    x = torch.randn(B, T, D)
    w = torch.randn(B, T, D)
    params = {k: v.detach() for k, v in weights_of(module).items()}
    with torch.no_grad():
        want = module(x)[0]
    forward = {f"torch.nn.{module_type.__name__}": lambda m=module: m(x)[0]}
    for label, fn in paths.items():
        forward[label] = lambda fn=fn: fn(x=x, **params)
        got = forward[label]()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=label)
    with torch.no_grad():
        times = interleaved(forward, repeats)
    rows = rows_of(name, times, base, "forward")

    xg = x.clone().requires_grad_()
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}

    def nn_fwd_bwd(m=module):
        m.zero_grad()
        xg.grad = None
        (m(xg)[0] * w).sum().backward()

    def recc_fwd_bwd(fn):
        def run():
            xg.grad = None
            for leaf in leaves.values():
                leaf.grad = None
            (fn(x=xg, **leaves) * w).sum().backward()

        return run

    backward = {f"torch.nn.{module_type.__name__}": nn_fwd_bwd}
    backward.update({label: recc_fwd_bwd(fn) for label, fn in paths.items()})
    rounds = max(2, repeats // 2)
    rows += rows_of(name, interleaved(backward, rounds), base, "fwd+bwd")
    return rows


def paragru_loop(x, p, w=None):
    """ParaGRU as a user writes it: projections for all steps, then a time loop."""
    xz = x @ p["B_z"].T + p["b_z"]
    xr = x @ p["B_r"].T + p["b_r"]
    xh = x @ p["B_h"].T + p["b_h"]
    h = torch.zeros(x.shape[0], p["A_z"].shape[0])
    outs = []
    for t in range(x.shape[1]):
        z = torch.sigmoid(p["A_z"] * h + xz[:, t])
        r = torch.sigmoid(p["A_r"] * h + xr[:, t])
        hc = torch.tanh(p["A_h"] * (h * r) + xh[:, t])
        h = z * hc + (1 - z) * h
        outs.append(h)
    out = torch.stack(outs, 1)
    if w is not None:
        (out * w).sum().backward()
    return out


def paragru_table(B, T, D, repeats) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    p = {f"A_{k}": torch.rand(D, generator=g) * 0.9 for k in "zrh"}
    p |= {f"B_{k}": torch.randn(D, D, generator=g) / D**0.5 for k in "zrh"}
    p |= {f"b_{k}": torch.randn(D, generator=g) * 0.1 for k in "zrh"}
    paths = {"recc torch": recc.compile(SPECS / "paragru.rec")}
    return against_python_loop(B, T, D, repeats, p, paths, "recc torch", g)


def against_python_loop(B, T, D, repeats, p: dict, paths: dict, base: str, g) -> list[dict]:
    """ParaGRU with params `p` through each of `paths` against the Python loop a user
    writes, forward and forward+backward; ratios to `base`'s time."""
    x = torch.randn(B, T, D, generator=g)
    w = torch.randn(B, T, D, generator=g)
    want = paragru_loop(x, p)
    forward = {"python loop": lambda: paragru_loop(x, p)}
    for label, fn in paths.items():
        forward[label] = lambda fn=fn: fn(x=x, **p)
        torch.testing.assert_close(forward[label](), want, rtol=1e-4, atol=1e-4, msg=label)
    with torch.no_grad():
        rows = rows_of("paragru", interleaved(forward, repeats), base, "forward")
    xg = x.clone().requires_grad_()
    leaves = {k: v.clone().requires_grad_() for k, v in p.items()}

    def clear():
        xg.grad = None
        for leaf in leaves.values():
            leaf.grad = None

    def loop_fwd_bwd():
        clear()
        paragru_loop(xg, leaves, w)

    def recc_fwd_bwd(fn):
        def run():
            clear()
            (fn(x=xg, **leaves) * w).sum().backward()

        return run

    backward = {"python loop": loop_fwd_bwd}
    backward.update({label: recc_fwd_bwd(fn) for label, fn in paths.items()})
    rows += rows_of("paragru", interleaved(backward, max(2, repeats // 2)), base, "fwd+bwd")
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'spec':8} {'pass':8} {'contender':20} {'seconds':>9} {'recc torch / it':>16}")
    for r in rows:
        print(
            f"{r['spec']:8} {r['pass']:8} {r['contender']:20} {r['seconds']:9.4f} "
            f"{r['ratio']:16.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T/8 and fewer rounds")
    parser.add_argument("--no-compile", action="store_true", help="skip torch_compile=True")
    parser.add_argument("--no-interpreter", action="store_true", help="skip the interpreter")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    scale = 8 if args.quick else 1
    repeats = 3 if args.quick else 5
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    print(f"dense cells: B=8, T={1024 // scale}, I=D=128")
    rows = dense_table(8, 1024 // scale, 128, repeats, not args.no_compile, not args.no_interpreter)
    print(f"ParaGRU: B=4, T={4096 // scale}, D=256")
    rows += paragru_table(4, 4096 // scale, 256, repeats)
    print_table(rows)


if __name__ == "__main__":
    main()
