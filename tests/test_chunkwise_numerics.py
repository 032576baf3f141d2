"""The chunkwise lowering's numerics at the edges users of hand-written kernels hit.

- Log gates scaled from 0.01 to 10 (decays from ~1 down to ~e^-10 per step, whose
  products over a chunk underflow): fp64 and fp32 against the interpreter in the same
  dtype, outputs, final state and every gradient (recc.testing.agree's tolerances:
  1e-10 and 1e-5 relative to the largest magnitude).
- Long sequences: T = 65,536 in fp32 against a float64 step loop written here (no
  recc code), and the fp32 gradients against the fp64 chunkwise ones.
- NaN inside a chunk with check_nan=False: what docs/lowering-chunkwise.md says
  (every output of that chunk and after is NaN or the loop's value, never another
  finite number; earlier chunks exact).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import recc
from recc.analysis import analyze
from recc.backends.torch.chunkwise import run_chunkwise
from recc.ir import load
from recc.lowering import plan
from recc.signature import bind
from recc.testing.agree import disagreements

ROOT = Path(__file__).resolve().parent.parent
F = torch.nn.functional


def gla_inputs(B, T, H, K, V, scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = {
        "q": torch.randn(B, T, H, K, generator=g, dtype=torch.float64) * K**-0.5,
        "k": torch.randn(B, T, H, K, generator=g, dtype=torch.float64) * K**-0.5,
        "v": torch.randn(B, T, H, V, generator=g, dtype=torch.float64),
        "gk": F.logsigmoid(torch.randn(B, T, H, K, generator=g, dtype=torch.float64)) * scale,
    }
    return {k: v.to(dtype) for k, v in x.items()}


def gated_deltanet_inputs(B, T, H, K, V, scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = {
        "q": torch.randn(B, T, H, K, generator=g, dtype=torch.float64) * K**-0.5,
        "k": F.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1),
        "v": torch.randn(B, T, H, V, generator=g, dtype=torch.float64),
        "g": F.logsigmoid(torch.randn(B, T, H, generator=g, dtype=torch.float64)) * scale,
        "beta": torch.rand(B, T, H, generator=g, dtype=torch.float64),
    }
    return {k: v.to(dtype) for k, v in x.items()}


MODELS = {"gla": gla_inputs, "gated_deltanet": gated_deltanet_inputs}


def _chunked(rec, L):
    lowering = plan(rec, analyze(rec))

    def run(tensors, init):
        return run_chunkwise(lowering.chunk, bind(rec, tensors, init, check_nan=False), L)

    return run


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("scale", [0.01, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_gates_scaled_from_a_hundredth_to_ten(name, scale, dtype):
    rec = load(ROOT / "specs" / f"{name}.rec")
    a = analyze(rec)
    for T, L, seed in ((130, 16, 0), (100, 64, 1)):
        tensors = MODELS[name](2, T, 2, 8, 4, scale, dtype, seed)
        shape = tuple({"K": 8, "V": 4}[d] for d in rec.state("S").dims)
        init = {"S": torch.randn(2, 2, *shape, generator=torch.Generator().manual_seed(T))}
        init = {"S": init["S"].to(dtype)}
        found = disagreements(rec, a, _chunked(rec, L), tensors, init, seed)
        assert not found, f"{name} scale={scale} T={T} L={L}: " + "; ".join(map(str, found))


def _loop(name, x):
    """The recurrence step by step in float64, as the papers write it (no recc code)."""
    x = {k: v.double() for k, v in x.items()}
    q, k, v = x["q"][0, :, 0], x["k"][0, :, 0], x["v"][0, :, 0]
    K, V = q.shape[-1], v.shape[-1]
    S = torch.zeros(K, V, dtype=torch.float64)  # [K, V], o = S^T q
    out = torch.empty(q.shape[0], V, dtype=torch.float64)
    for t in range(q.shape[0]):
        if name == "gla":
            S = torch.exp(x["gk"][0, t, 0])[:, None] * S + torch.outer(k[t], v[t])
        else:  # gated delta rule: S = a S (I - b k k^T) + b k v^T, in [K, V]
            S = torch.exp(x["g"][0, t, 0]) * S
            b = x["beta"][0, t, 0]
            S = S + torch.outer(k[t], b * (v[t] - S.T @ k[t]))
        out[t] = S.T @ q[t]
    return out, S


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_sixty_five_thousand_steps_in_fp32(name):
    T = 65_536
    rec = load(ROOT / "specs" / f"{name}.rec")
    fn = recc.compile(ROOT / "specs" / f"{name}.rec", backend="torch")
    assert fn.plan.chunk is not None  # auto: chunkwise at this T
    x = MODELS[name](1, T, 1, 16, 16, 1.0, torch.float32, seed=5)
    o, S = fn(**x, output_final_state=True)
    o_ref, S_ref = _loop(name, x)
    err = (o[0, :, 0].double() - o_ref).abs().max() / o_ref.abs().max()
    final = S[0, 0].double() if name == "gla" else S[0, 0].double().T  # gdn stores [V, K]
    err_final = (final - S_ref).abs().max() / S_ref.abs().max()
    assert err <= 1e-5 and err_final <= 1e-5, (err.item(), err_final.item())

    # gradients in fp32 against the fp64 chunkwise path (tested against the interpreter)
    def grads(dtype):
        leaves = {k: v.detach().to(dtype).clone().requires_grad_() for k, v in x.items()}
        w = torch.randn(o.shape, generator=torch.Generator().manual_seed(6)).to(dtype)
        (fn(**leaves) * w).sum().backward()
        return {k: v.grad for k, v in leaves.items()}

    g32, g64 = grads(torch.float32), grads(torch.float64)
    for k in g64:
        rel = (g32[k].double() - g64[k]).abs().max() / g64[k].abs().max()
        assert rel <= 1e-5, (rec.name, k, rel.item())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_nan_inside_a_chunk_never_gives_a_wrong_finite_output(name):
    """check_nan=False, a NaN key at step 70 of chunk [64, 128): outputs before the
    chunk are exact; from the chunk's start each output is NaN or the loop's value;
    from step 70 on, NaN as in the loop; the final state NaN."""
    fn = recc.compile(ROOT / "specs" / f"{name}.rec", backend="torch", strategy="chunkwise")
    loop = recc.compile(ROOT / "specs" / f"{name}.rec", backend="interpreter")
    x = MODELS[name](1, 150, 2, 8, 4, 1.0, torch.float64, seed=7)
    x["k"][0, 70, 1, 3] = float("nan")
    o, S = fn(**x, output_final_state=True, check_nan=False)
    o_ref, _ = loop(**x, output_final_state=True, check_nan=False)
    torch.testing.assert_close(o[:, :64], o_ref[:, :64], rtol=1e-10, atol=1e-12)
    assert torch.isnan(o_ref[:, 70:, 1]).all() and torch.isnan(o[:, 70:, 1]).all()
    middle, middle_ref = o[:, 64:], o_ref[:, 64:]
    wrong = ~torch.isnan(middle) & ~torch.isclose(middle, middle_ref, rtol=1e-10, atol=1e-12)
    assert not wrong.any(), "a finite output differs from the loop's"
    assert torch.isnan(S[:, 1]).any()
