"""Decoding one token at a time: `fn.step` against a full call per token and the
step a user writes by hand.

Run:  python benchmarks/decode.py

minGRU and GRU at B=1, D=256 (GRU: I=256), fp32, on this machine's CPU: the
microseconds per token of
  fn.step          `recc.compile(spec).step(state, **inputs_t)`
  full call, T=1   `fn(**inputs[:, None], initial_state=state, output_final_state=True)`
  by hand          the step written in torch (minGRU: sigmoid and two products;
                   GRU: torch.nn.GRUCell)
interleaved (benchmarks/scan.py), best of the rounds; and the ratio of each to
`fn.step`. Every contender's tokens are checked against the full call's first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import recc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import interleaved  # noqa: E402
from sequential import gru_weights  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs"
TOKENS = 200


def per_token(contenders: dict, rounds: int = 5) -> dict[str, float]:
    times = interleaved(contenders, rounds)
    return {k: min(v) / TOKENS * 1e6 for k, v in times.items()}


def mingru(D: int) -> dict:
    fn = recc.compile(SPECS / "mingru.rec")
    k, v = torch.randn(1, TOKENS, D), torch.randn(1, TOKENS, D)
    want = fn(k=k, v=v)

    def step():
        h = None
        for t in range(TOKENS):
            y, h = fn.step(h, k=k[:, t], v=v[:, t])
        return y

    def full():
        h = torch.zeros(1, D)
        for t in range(TOKENS):
            y, h = fn(k=k[:, t : t + 1], v=v[:, t : t + 1], initial_state=h,
                      output_final_state=True)  # fmt: skip
        return y[:, 0]

    def hand():
        h = torch.zeros(1, D)
        for t in range(TOKENS):
            z = torch.sigmoid(k[:, t])
            h = (1 - z) * h + z * v[:, t]
        return h

    for f in (step, full, hand):
        torch.testing.assert_close(f(), want[:, -1], rtol=1e-5, atol=1e-5)
    return {"fn.step": step, "full call, T=1": full, "by hand": hand}


def gru(D: int) -> dict:
    torch.manual_seed(0)
    module = torch.nn.GRU(D, D, batch_first=True)
    cell = torch.nn.GRUCell(D, D)
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in module.state_dict().items()})
    fn = recc.compile(SPECS / "gru.rec")
    params = {k: v.detach() for k, v in gru_weights(module).items()}
    x = torch.randn(1, TOKENS, D)
    with torch.no_grad():
        want = module(x)[0][:, -1]

    def step():
        h = None
        for t in range(TOKENS):
            y, h = fn.step(h, x=x[:, t], **params)
        return y

    def full():
        h = torch.zeros(1, D)
        for t in range(TOKENS):
            y, h = fn(x=x[:, t : t + 1], **params, initial_state=h, output_final_state=True)
        return y[:, 0]

    def hand():
        h = torch.zeros(1, D)
        for t in range(TOKENS):
            h = cell(x[:, t], h)
        return h

    with torch.no_grad():
        for f in (step, full, hand):
            torch.testing.assert_close(f(), want, rtol=1e-4, atol=1e-4)
    return {"fn.step": step, "full call, T=1": full, "by hand": hand}


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, B=1, D=256")
    print(f"{'spec':8} {'contender':16} {'us/token':>9} {'/ fn.step':>10}")
    with torch.no_grad():
        for name, make in (("mingru", mingru), ("gru", gru)):
            times = per_token(make(256))
            for label, us in times.items():
                print(f"{name:8} {label:16} {us:9.1f} {us / times['fn.step']:10.2f}")


if __name__ == "__main__":
    main()
