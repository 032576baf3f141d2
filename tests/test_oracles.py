"""Oracle tests: zoo specs run by the interpreter against code nobody here wrote.

- gru / lstm / elman against torch.nn.GRU / LSTM / RNN with the same weights.
- Every diagonal, DPLR and MinMax spec against a reference written in this file
  straight from the paper's equations (the source each spec's first line cites;
  docs/zoo.md), not from the spec, and where possible by a different route: the
  closed (all-steps-at-once) solution of a diagonal recurrence, complex arithmetic
  for LRU, mamba's (B, D, L) layout for S6,
  RetNet's parallel form, the stabilised mLSTM, flash-linear-attention's K x V
  prediction-error form of the delta rule, DeltaProduct as a DeltaNet over T * n_h
  sub-steps, fla's generic DPLR form for RWKV-7, and semiring folds for MinMax.

Everything in fp64; outputs, final states, and gradients of a random projection of
both with respect to every leaf tensor.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import recc
from recc.interpreter import run
from recc.ir import Recurrence, load
from recc.signature import bind

SPECS = Path(__file__).resolve().parent.parent / "specs"
DTYPE = torch.float64
# fp64 round-off: spec and oracle compute the same mathematics in a different order.
TOL = {"rtol": 1e-10, "atol": 1e-12}


@functools.cache
def spec(name: str) -> Recurrence:
    return load(SPECS / f"{name}.rec")


def run_spec(name: str, tensors: dict, initial_state: dict | None = None, engine="interpreter"):
    """(outputs, finals) of the zoo spec `name`: on the interpreter, or through
    `recc.compile(..., backend=engine)` ("newton": the torch backend's Newton solver)."""
    rec = spec(name)
    if engine == "interpreter":
        return run(rec, bind(rec, tensors, initial_state))
    if engine == "newton":
        fn = recc.compile(SPECS / f"{name}.rec", backend="torch", strategy="newton")
    else:
        fn = recc.compile(SPECS / f"{name}.rec", backend=engine)
    values, states = fn(**tensors, initial_state=initial_state, output_final_state=True)
    values = values if len(rec.outputs) > 1 else (values,)
    states = states if len(rec.states) > 1 else (states,)
    return (
        {o.name: v for o, v in zip(rec.outputs, values)},
        {s.name: v for s, v in zip(rec.states, states)},
    )


def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, dtype=DTYPE) * scale).requires_grad_()


def assert_match(pairs: list[tuple[str, torch.Tensor, torch.Tensor]], leaves: list) -> None:
    """Values equal, and so are the gradients of a random projection w.r.t. every leaf."""
    for what, got, want in pairs:
        assert got.shape == want.shape, (what, got.shape, want.shape)
        torch.testing.assert_close(got, want, **TOL, msg=lambda m, w=what: f"{w}: {m}")
    weights = [torch.randn_like(want) for _, _, want in pairs]
    got_loss = sum((g * w).sum() for (_, g, _), w in zip(pairs, weights))
    want_loss = sum((t * w).sum() for (_, _, t), w in zip(pairs, weights))
    got_grads = torch.autograd.grad(got_loss, leaves, retain_graph=True, allow_unused=True)
    want_grads = torch.autograd.grad(want_loss, leaves, allow_unused=True)
    for i, (g, w) in enumerate(zip(got_grads, want_grads)):
        assert g is not None and w is not None, f"leaf {i}: no gradient"
        torch.testing.assert_close(g, w, **TOL, msg=lambda m, i=i: f"grad of leaf {i}: {m}")


# ---------------------------------------------------------------- torch.nn oracles


# The interpreter, the torch backend's sequential loop (what these specs run on a CPU)
# and its Newton solver (quasi-Newton: their recurrent weights are dense).
NN_ENGINES = pytest.mark.parametrize("engine", ["interpreter", "torch", "newton"])


def _reinit(module: torch.nn.Module) -> None:
    """Weights larger than torch's default init, so the nonlinearities are exercised."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.6)


@NN_ENGINES
def test_gru_equals_torch_nn_gru(engine: str) -> None:
    B, T, I, D = 2, 7, 3, 4  # noqa: N806
    gru = torch.nn.GRU(I, D, batch_first=True, dtype=DTYPE)
    _reinit(gru)
    x, h0 = rand(B, T, I), rand(1, B, D)
    y, hn = gru(x, h0)
    w_ir, w_iz, w_in = gru.weight_ih_l0.chunk(3)
    w_hr, w_hz, w_hn = gru.weight_hh_l0.chunk(3)
    b_ir, b_iz, b_in = gru.bias_ih_l0.chunk(3)
    b_hr, b_hz, b_hn = gru.bias_hh_l0.chunk(3)
    tensors = dict(
        x=x,
        W_ir=w_ir, W_iz=w_iz, W_in=w_in, W_hr=w_hr, W_hz=w_hz, W_hn=w_hn,
        b_ir=b_ir, b_iz=b_iz, b_in=b_in, b_hr=b_hr, b_hz=b_hz, b_hn=b_hn,
    )  # fmt: skip
    outs, finals = run_spec("gru", tensors, {"h": h0[0]}, engine=engine)
    assert_match(
        [("output h", outs["h"], y), ("final h", finals["h"], hn[0])],
        [x, h0, *gru.parameters()],
    )


@NN_ENGINES
def test_lstm_equals_torch_nn_lstm(engine: str) -> None:
    B, T, I, D = 2, 7, 3, 4  # noqa: N806
    lstm = torch.nn.LSTM(I, D, batch_first=True, dtype=DTYPE)
    _reinit(lstm)
    x, h0, c0 = rand(B, T, I), rand(1, B, D), rand(1, B, D)
    y, (hn, cn) = lstm(x, (h0, c0))
    tensors = {"x": x}
    for gate, w_i, w_h, b_i, b_h in zip(
        "ifgo",
        lstm.weight_ih_l0.chunk(4),
        lstm.weight_hh_l0.chunk(4),
        lstm.bias_ih_l0.chunk(4),
        lstm.bias_hh_l0.chunk(4),
    ):
        tensors.update({f"W_i{gate}": w_i, f"W_h{gate}": w_h, f"b_i{gate}": b_i, f"b_h{gate}": b_h})
    outs, finals = run_spec("lstm", tensors, {"h": h0[0], "c": c0[0]}, engine=engine)
    assert_match(
        [
            ("output h", outs["h"], y),
            ("final h", finals["h"], hn[0]),
            ("final c", finals["c"], cn[0]),
        ],
        [x, h0, c0, *lstm.parameters()],
    )


@NN_ENGINES
def test_elman_equals_torch_nn_rnn(engine: str) -> None:
    B, T, I, D = 2, 7, 3, 4  # noqa: N806
    rnn = torch.nn.RNN(I, D, nonlinearity="tanh", batch_first=True, dtype=DTYPE)
    _reinit(rnn)
    x, h0 = rand(B, T, I), rand(1, B, D)
    y, hn = rnn(x, h0)
    tensors = dict(
        x=x, W_ih=rnn.weight_ih_l0, W_hh=rnn.weight_hh_l0, b_ih=rnn.bias_ih_l0, b_hh=rnn.bias_hh_l0
    )
    outs, finals = run_spec("elman", tensors, {"h": h0[0]}, engine=engine)
    assert_match(
        [("output h", outs["h"], y), ("final h", finals["h"], hn[0])],
        [x, h0, *rnn.parameters()],
    )


@NN_ENGINES
def test_elman_default_initial_state_is_zero(engine: str) -> None:
    B, T, I, D = 2, 5, 3, 4  # noqa: N806
    rnn = torch.nn.RNN(I, D, batch_first=True, dtype=DTYPE)
    x = rand(B, T, I)
    y, hn = rnn(x)
    tensors = dict(
        x=x, W_ih=rnn.weight_ih_l0, W_hh=rnn.weight_hh_l0, b_ih=rnn.bias_ih_l0, b_hh=rnn.bias_hh_l0
    )
    outs, finals = run_spec("elman", tensors, engine=engine)
    assert_match([("output h", outs["h"], y), ("final h", finals["h"], hn[0])], [x])


# ---------------------------------------------------------------- diagonal


def closed_form_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All h_t of h_t = a_t h_{t-1} + b_t at once (a > 0, time on axis 1).

    h_t = P_t h_0 + sum_{s <= t} (P_t / P_s) b_s with P_t = prod_{r <= t} a_r, the
    ratios taken in log space.
    """
    log_p = torch.log(a).cumsum(1)  # [B, T, ...]
    steps = a.shape[1]
    ratio = log_p[:, :, None] - log_p[:, None, :]  # [B, t, s, ...]
    causal = torch.ones(steps, steps, dtype=torch.bool).tril()
    causal = causal.view(1, steps, steps, *([1] * (a.dim() - 2)))
    weights = torch.where(causal, ratio, -math.inf).exp()
    return log_p.exp() * h0[:, None] + (weights * b[:, None]).sum(2)


def test_mingru_matches_paper() -> None:
    B, T, D = 2, 9, 4  # noqa: N806
    k, v, h0 = rand(B, T, D), rand(B, T, D), rand(B, D)
    z = torch.sigmoid(k)
    h = closed_form_scan(1 - z, z * v, h0)
    outs, finals = run_spec("mingru", {"k": k, "v": v}, {"h": h0})
    assert_match([("h", outs["h"], h), ("final h", finals["h"], h[:, -1])], [k, v, h0])


def test_ema_matches_exponential_smoothing_with_and_without_heads() -> None:
    # s_t = a s_{t-1} + (1 - a) x_t, a = sigmoid(a_logit): a scalar state (per head).
    B, T, H = 2, 9, 3  # noqa: N806
    for lead in [(B, T), (B, T, H)]:
        x, logit, s0 = rand(*lead), rand(), rand(*lead[:1], *lead[2:])
        a = torch.sigmoid(logit).expand(x.shape)
        s = closed_form_scan(a, (1 - a) * x, s0)
        outs, finals = run_spec("ema", {"x": x, "a_logit": logit}, {"s": s0})
        assert_match([("s", outs["s"], s), ("final s", finals["s"], s[:, -1])], [x, logit, s0])


def test_minlstm_matches_paper() -> None:
    B, T, D = 2, 9, 4  # noqa: N806
    kf, ki, v, h0 = rand(B, T, D), rand(B, T, D), rand(B, T, D), rand(B, D)
    f, i = torch.sigmoid(kf), torch.sigmoid(ki)
    h = closed_form_scan(f / (f + i), i / (f + i) * v, h0)
    outs, finals = run_spec("minlstm", {"kf": kf, "ki": ki, "v": v}, {"h": h0})
    assert_match([("h", outs["h"], h), ("final h", finals["h"], h[:, -1])], [kf, ki, v, h0])


def test_hgrn_matches_fla_naive_recurrent_hgrn() -> None:
    B, T, H, D = 2, 9, 2, 4  # noqa: N806
    x, g_raw, h0 = rand(B, T, H, D), rand(B, T, H, D), rand(B, H, D)
    g = F.logsigmoid(g_raw)
    h, hs = h0, []
    for t in range(T):
        h = g[:, t].exp() * h + x[:, t]
        hs.append(h)
    outs, finals = run_spec("hgrn", {"x": x, "g": g}, {"h": h0})
    assert_match(
        [("h", outs["h"], torch.stack(hs, 1)), ("final h", finals["h"], h)], [x, g_raw, h0]
    )


def test_qrnn_f_pooling_matches_paper() -> None:
    B, T, D = 2, 9, 4  # noqa: N806
    zp, fp, h0 = rand(B, T, D), rand(B, T, D), rand(B, D)
    f = torch.sigmoid(fp)
    h = closed_form_scan(f, (1 - f) * torch.tanh(zp), h0)
    outs, finals = run_spec("qrnn", {"z_pre": zp, "f_pre": fp}, {"h": h0})
    assert_match([("h", outs["h"], h), ("final h", finals["h"], h[:, -1])], [zp, fp, h0])


def test_sru_matches_paper() -> None:
    B, T, D = 2, 9, 4  # noqa: N806
    x, xt, fp, rp, c0 = rand(B, T, D), rand(B, T, D), rand(B, T, D), rand(B, T, D), rand(B, D)
    f, r = torch.sigmoid(fp), torch.sigmoid(rp)
    c = closed_form_scan(f, (1 - f) * xt, c0)
    h = r * torch.tanh(c) + (1 - r) * x
    tensors = {"x": x, "xt": xt, "f_pre": fp, "r_pre": rp}
    outs, finals = run_spec("sru", tensors, {"c": c0})
    assert_match([("h", outs["h"], h), ("final c", finals["c"], c[:, -1])], [x, xt, fp, rp, c0])


def test_rglru_matches_griffin() -> None:
    B, T, D = 2, 9, 4  # noqa: N806
    x, rp, ip, h0 = rand(B, T, D), rand(B, T, D), rand(B, T, D), rand(B, D)
    lam = rand(D)
    r, i = torch.sigmoid(rp), torch.sigmoid(ip)
    a = torch.pow(torch.sigmoid(lam), 8.0 * r)  # a_t = sigma(Lambda)^(c r_t), c = 8
    h = closed_form_scan(a, torch.sqrt(1 - a**2) * (i * x), h0)
    outs, finals = run_spec("rglru", {"x": x, "r_pre": rp, "i_pre": ip, "Lambda": lam}, {"h": h0})
    assert_match([("h", outs["h"], h), ("final h", finals["h"], h[:, -1])], [x, rp, ip, lam, h0])


def test_lru_matches_complex_recurrence() -> None:
    B, T, D = 2, 9, 4  # noqa: N806
    nu, theta_log = rand(D), rand(D)
    u_re, u_im, h0_re, h0_im = rand(B, T, D), rand(B, T, D), rand(B, D), rand(B, D)
    # Reference: complex128, lambda = exp(-exp(nu) + i exp(theta_log)).
    lam = torch.exp(torch.complex(-torch.exp(nu), torch.exp(theta_log)))
    gamma = torch.sqrt(1 - lam.abs() ** 2)
    u = torch.complex(u_re, u_im)
    h, hs = torch.complex(h0_re, h0_im), []
    for t in range(T):
        h = lam * h + gamma * u[:, t]
        hs.append(h)
    ref = torch.stack(hs, 1)
    tensors = {"u_re": u_re, "u_im": u_im, "nu": nu, "theta_log": theta_log}
    outs, finals = run_spec("lru", tensors, {"h_re": h0_re, "h_im": h0_im})
    assert_match(
        [
            ("h_re", outs["h_re"], ref.real),
            ("h_im", outs["h_im"], ref.imag),
            ("final h_re", finals["h_re"], h.real),
            ("final h_im", finals["h_im"], h.imag),
        ],
        [nu, theta_log, u_re, u_im, h0_re, h0_im],
    )


def selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, x0):  # noqa: N803
    """mamba_ssm selective_scan_ref semantics, (batch, channels, length) layout.

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l); D, delta_bias: (d,);
    delta_softplus=True; x0: (b, d, n) (the reference starts from zeros).
    Returns out (b, d, l) and the last state (b, d, n).
    """
    delta = F.softplus(delta + delta_bias[:, None])
    x, ys = x0, []
    for i in range(u.shape[-1]):
        delta_a = torch.exp(delta[:, :, i, None] * A)  # (b, d, n)
        delta_b_u = delta[:, :, i, None] * B[:, None, :, i] * u[:, :, i, None]
        x = delta_a * x + delta_b_u
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    out = y + u * D[:, None]
    return out * F.silu(z), x


def test_mamba_s6_matches_selective_scan_ref() -> None:
    b, d, n, length = 2, 4, 3, 9
    u, delta, z = rand(b, d, length), rand(b, d, length), rand(b, d, length)
    bm, cm = rand(b, n, length), rand(b, n, length)
    a_log, dskip, delta_bias, x0 = rand(d, n), rand(d), rand(d), rand(b, d, n)
    a = -torch.exp(a_log)
    out, last = selective_scan_reference(u, delta, a, bm, cm, dskip, z, delta_bias, x0)
    tensors = {
        "u": u.transpose(1, 2),
        "delta": delta.transpose(1, 2),
        "Bt": bm.transpose(1, 2),
        "Ct": cm.transpose(1, 2),
        "z": z.transpose(1, 2),
        "A": a,
        "Dskip": dskip,
        "delta_bias": delta_bias,
    }
    outs, finals = run_spec("mamba_s6", tensors, {"h": x0})
    assert_match(
        [("y", outs["y"], out.transpose(1, 2)), ("final h", finals["h"], last)],
        [u, delta, z, bm, cm, a_log, dskip, delta_bias, x0],
    )


def test_mamba_s6_default_initial_state_is_zero() -> None:
    b, d, n, length = 2, 3, 2, 6
    u, delta, z = rand(b, d, length), rand(b, d, length), rand(b, d, length)
    bm, cm = rand(b, n, length), rand(b, n, length)
    a, dskip, delta_bias = -torch.exp(rand(d, n)), rand(d), rand(d)
    zeros = torch.zeros(b, d, n, dtype=DTYPE)
    out, last = selective_scan_reference(u, delta, a, bm, cm, dskip, z, delta_bias, zeros)
    tensors = dict(
        u=u.transpose(1, 2), delta=delta.transpose(1, 2), Bt=bm.transpose(1, 2),
        Ct=cm.transpose(1, 2), z=z.transpose(1, 2), A=a, Dskip=dskip, delta_bias=delta_bias,
    )  # fmt: skip
    outs, finals = run_spec("mamba_s6", tensors)
    assert_match([("y", outs["y"], out.transpose(1, 2)), ("final h", finals["h"], last)], [u])


def test_retnet_matches_parallel_retention() -> None:
    B, T, H, K, V = 2, 8, 2, 3, 4  # noqa: N806
    q, k, v = rand(B, T, H, K), rand(B, T, H, K), rand(B, T, H, V)
    gamma_raw, s0 = rand(H), rand(B, H, K, V)
    gamma = torch.sigmoid(gamma_raw + 2)
    # Parallel form: O = (Q K^T * D) V with D[n, m] = gamma^(n - m) for n >= m, plus the
    # initial state decayed by gamma^(n + 1).
    n = torch.arange(T, dtype=DTYPE)
    gap = n[:, None] - n[None, :]
    decay = torch.where(gap >= 0, gamma[:, None, None] ** gap.clamp(min=0), 0.0)  # [H, T, T]
    scores = torch.einsum("bnhk,bmhk->bhnm", q, k) * decay
    o = torch.einsum("bhnm,bmhv->bnhv", scores, v)
    o = o + torch.einsum("bnhk,bhkv->bnhv", q, s0) * (gamma[None, :] ** (n[:, None] + 1))[..., None]
    s_last = gamma[:, None, None] ** T * s0 + torch.einsum(
        "bmhk,bmhv,hm->bhkv", k, v, gamma[:, None] ** (T - 1 - n[None, :])
    )
    outs, finals = run_spec("retnet", {"q": q, "k": k, "v": v, "gamma": gamma}, {"S": s0})
    assert_match([("o", outs["o"], o), ("final S", finals["S"], s_last)], [q, k, v, gamma_raw, s0])


def test_gla_matches_fla_naive_recurrent_gla() -> None:
    B, T, H, K, V = 2, 8, 2, 3, 4  # noqa: N806
    q, k, v, g_raw, s0 = (
        rand(B, T, H, K),
        rand(B, T, H, K),
        rand(B, T, H, V),
        rand(B, T, H, K),
        rand(B, H, K, V),
    )
    gk = F.logsigmoid(g_raw)
    scale = K**-0.5
    s, os = s0, []
    for t in range(T):
        s = s * gk[:, t].exp()[..., None] + k[:, t, ..., None] * v[:, t, ..., None, :]
        os.append(((q[:, t] * scale)[..., None] * s).sum(-2))
    outs, finals = run_spec("gla", {"q": q * scale, "k": k, "v": v, "gk": gk}, {"S": s0})
    assert_match(
        [("o", outs["o"], torch.stack(os, 1)), ("final S", finals["S"], s)],
        [q, k, v, g_raw, s0],
    )


def test_mamba2_matches_selective_state_update() -> None:
    B, T, H, P, N = 2, 8, 2, 3, 4  # noqa: N806
    x, dt, bm, cm = rand(B, T, H, P), rand(B, T, H), rand(B, T, H, N), rand(B, T, H, N)
    a_log, dt_bias, dskip, s0 = rand(H), rand(H), rand(H), rand(B, H, P, N)
    a = -torch.exp(a_log)
    state, ys = s0, []  # mamba's layout: state (batch, heads, headdim P, dstate N)
    for t in range(T):
        dtt = F.softplus(dt[:, t] + dt_bias)  # (B, H)
        d_a = torch.exp(dtt * a)
        d_b = dtt[..., None] * bm[:, t]  # (B, H, N)
        state = state * d_a[..., None, None] + x[:, t, :, :, None] * d_b[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, cm[:, t]) + dskip[:, None] * x[:, t])
    tensors = {"x": x, "dt": dt, "Bt": bm, "Ct": cm, "A_log": a_log, "dt_bias": dt_bias}
    tensors["Dskip"] = dskip
    outs, finals = run_spec("mamba2", tensors, {"S": s0.transpose(-1, -2)})
    assert_match(
        [("y", outs["y"], torch.stack(ys, 1)), ("final S", finals["S"], state.transpose(-1, -2))],
        [x, dt, bm, cm, a_log, dt_bias, dskip, s0],
    )


def test_mlstm_unstabilised_equals_stabilised_xlstm() -> None:
    """The spec's unstabilised mLSTM against xLSTM's stabilised form (with m)."""
    B, T, H, K, V = 2, 8, 2, 3, 4  # noqa: N806
    q, k, v = rand(B, T, H, K), rand(B, T, H, K), rand(B, T, H, V)
    ig, fg = rand(B, T, H), rand(B, T, H)
    c0, n0 = rand(B, H, V, K), rand(B, H, K)  # paper orientation: C is d_v x d_k
    # Stabilised: C' = C exp(-m), n' = n exp(-m); m_0 = 0 so C'_0 = C_0.
    c, n, m, hs = c0, n0, torch.zeros(B, H, dtype=DTYPE), []
    for t in range(T):
        log_i, log_f = ig[:, t], F.logsigmoid(fg[:, t])
        m_new = torch.maximum(log_f + m, log_i)
        i = torch.exp(log_i - m_new)[..., None]
        f = torch.exp(log_f + m - m_new)[..., None]
        c = f[..., None] * c + i[..., None] * v[:, t, ..., :, None] * k[:, t, ..., None, :]
        n = f * n + i * k[:, t]
        qt = q[:, t]
        num = (c @ qt[..., None])[..., 0]
        den = torch.maximum((n * qt).sum(-1).abs(), torch.exp(-m_new))
        hs.append(num / den[..., None])
        m = m_new
    scale = torch.exp(m)[..., None]
    tensors = {"q": q, "k": k, "v": v, "ig": ig, "fg": fg}
    outs, finals = run_spec("mlstm", tensors, {"C": c0.transpose(-1, -2), "n": n0})
    assert_match(
        [
            ("h", outs["h"], torch.stack(hs, 1)),
            ("final C", finals["C"], (c * scale[..., None]).transpose(-1, -2)),
            ("final n", finals["n"], n * scale),
        ],
        [q, k, v, ig, fg, c0, n0],
    )


# ---------------------------------------------------------------- DPLR


def delta_rule_reference(q, k, v, beta, g=None, scale=1.0, s0=None):
    """fla's naive (gated) delta rule, K x V state, [B, T, H, *] layout.

    S <- exp(g) S; v_new = beta (v - S^T k); S <- S + k v_new^T; o = S^T (scale q).
    """
    B, T, H, K = k.shape  # noqa: N806
    V = v.shape[-1]  # noqa: N806
    s = torch.zeros(B, H, K, V, dtype=k.dtype) if s0 is None else s0
    os = []
    for t in range(T):
        if g is not None:
            s = s * g[:, t].exp()[..., None, None]
        k_t = k[:, t]
        v_new = (v[:, t] - (s * k_t[..., None]).sum(-2)) * beta[:, t, ..., None]
        s = s + k_t[..., None] * v_new[..., None, :]
        os.append(((q[:, t] * scale)[..., None] * s).sum(-2))
    return torch.stack(os, 1), s


def test_deltanet_matches_fla_delta_rule() -> None:
    B, T, H, K, V = 2, 8, 2, 3, 4  # noqa: N806
    q_raw, k_raw, v, b_raw = rand(B, T, H, K), rand(B, T, H, K), rand(B, T, H, V), rand(B, T, H)
    s0 = rand(B, H, K, V)  # fla's K x V
    q, k, beta = F.normalize(q_raw, dim=-1), F.normalize(k_raw, dim=-1), torch.sigmoid(b_raw)
    o, s = delta_rule_reference(q, k, v, beta, s0=s0)
    tensors = {"q": q, "k": k, "v": v, "beta": beta}
    outs, finals = run_spec("deltanet", tensors, {"S": s0.transpose(-1, -2)})
    assert_match(
        [("o", outs["o"], o), ("final S", finals["S"], s.transpose(-1, -2))],
        [q_raw, k_raw, v, b_raw, s0],
    )


def test_gated_deltanet_matches_fla_naive_recurrent_gated_delta_rule() -> None:
    B, T, H, K, V = 2, 8, 2, 3, 4  # noqa: N806
    q_raw, k_raw, v, b_raw = rand(B, T, H, K), rand(B, T, H, K), rand(B, T, H, V), rand(B, T, H)
    g_raw, s0 = rand(B, T, H), rand(B, H, K, V)
    q, k, beta = F.normalize(q_raw, dim=-1), F.normalize(k_raw, dim=-1), torch.sigmoid(b_raw)
    g = F.logsigmoid(g_raw)
    scale = K**-0.5
    o, s = delta_rule_reference(q, k, v, beta, g=g, scale=scale, s0=s0)
    tensors = {"q": q * scale, "k": k, "v": v, "g": g, "beta": beta}
    outs, finals = run_spec("gated_deltanet", tensors, {"S": s0.transpose(-1, -2)})
    assert_match(
        [("o", outs["o"], o), ("final S", finals["S"], s.transpose(-1, -2))],
        [q_raw, k_raw, v, b_raw, g_raw, s0],
    )


def test_deltaproduct_is_gated_deltanet_over_householder_substeps() -> None:
    """fla's DeltaProduct: a gated DeltaNet over T * n_h steps, gate on the first sub-step."""
    B, T, H, K, V = 2, 6, 2, 3, 4  # noqa: N806
    q = F.normalize(rand(B, T, H, K), dim=-1)
    k1_raw, k2_raw = rand(B, T, H, K), rand(B, T, H, K)
    v1, v2, b1_raw, b2_raw = rand(B, T, H, V), rand(B, T, H, V), rand(B, T, H), rand(B, T, H)
    g_raw, s0 = rand(B, T, H), rand(B, H, K, V)
    k1, k2 = F.normalize(k1_raw, dim=-1), F.normalize(k2_raw, dim=-1)
    beta1, beta2 = 2 * torch.sigmoid(b1_raw), 2 * torch.sigmoid(b2_raw)  # (0, 2): reflections
    g = F.logsigmoid(g_raw)

    def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack([a, b], dim=2).flatten(1, 2)  # [B, 2T, ...], a at even sub-steps

    o, s = delta_rule_reference(
        interleave(q, q),
        interleave(k1, k2),
        interleave(v1, v2),
        interleave(beta1, beta2),
        g=interleave(g, torch.zeros_like(g)),
        s0=s0,
    )
    tensors = dict(q=q, k1=k1, k2=k2, v1=v1, v2=v2, beta1=beta1, beta2=beta2, g=g)
    outs, finals = run_spec("deltaproduct", tensors, {"S": s0.transpose(-1, -2)})
    assert_match(
        [("o", outs["o"], o[:, 1::2]), ("final S", finals["S"], s.transpose(-1, -2))],
        [k1_raw, k2_raw, v1, v2, b1_raw, b2_raw, g_raw, s0],
    )


def test_rwkv7_matches_fla_generic_dplr() -> None:
    """RWKV-7 through fla's generic DPLR: S = diag(exp(gk)) S + b (a^T S) + k v^T (K x V)."""
    B, T, H, K, V = 2, 8, 2, 3, 4  # noqa: N806
    r, w_pre, k, v, a_pre = (
        rand(B, T, H, K),
        rand(B, T, H, K),
        rand(B, T, H, K),
        rand(B, T, H, V),
        rand(B, T, H, K),
    )
    k_k, k_a, s0 = rand(H, K), rand(H, K), rand(B, H, K, V)
    # RWKV-7's own parametrisation, as in its reference code.
    w = torch.exp(-math.exp(-0.5) * torch.sigmoid(w_pre))
    kappa = F.normalize(k * k_k, dim=-1)
    a_rwkv = torch.sigmoid(a_pre)
    k_tilde = k * (1 + (a_rwkv - 1) * k_a)
    # fla's generic DPLR inputs: gk = log w, a = -kappa, b = kappa * a.
    gk, a_fla, b_fla = torch.log(w), -kappa, kappa * a_rwkv
    s, os = s0, []
    for t in range(T):
        a_s = (a_fla[:, t, ..., None] * s).sum(-2)  # a^T S: [B, H, V]
        s = (
            gk[:, t].exp()[..., None] * s
            + b_fla[:, t, ..., None] * a_s[..., None, :]
            + k_tilde[:, t, ..., None] * v[:, t, ..., None, :]
        )
        os.append((r[:, t, ..., None] * s).sum(-2))
    tensors = {"r": r, "w_pre": w_pre, "k": k, "v": v, "a_pre": a_pre, "k_k": k_k, "k_a": k_a}
    outs, finals = run_spec("rwkv7", tensors, {"S": s0.transpose(-1, -2)})
    assert_match(
        [("o", outs["o"], torch.stack(os, 1)), ("final S", finals["S"], s.transpose(-1, -2))],
        [r, w_pre, k, v, a_pre, k_k, k_a, s0],
    )


# ---------------------------------------------------------------- MinMax


def test_minmax_rnc_matches_max_min_semiring_fold() -> None:
    """h_t = phi_t o ... o phi_1 (h_0) with phi(h) = max(min(h, a), b), composed by
    (a2, b2) o (a1, b1) = (min(a2, a1), max(min(a2, b1), b2))."""
    B, T, D = 2, 12, 5  # noqa: N806
    xa, xb = rand(B, T, D, scale=3.0), rand(B, T, D, scale=3.0)
    h0 = torch.rand(B, D, dtype=DTYPE).requires_grad_()
    a, b = torch.sigmoid(xa), torch.sigmoid(xb)
    ca, cb, hs = a[:, 0], b[:, 0], []
    for t in range(T):
        if t:
            ca, cb = torch.minimum(a[:, t], ca), torch.maximum(torch.minimum(a[:, t], cb), b[:, t])
        hs.append(torch.maximum(torch.minimum(h0, ca), cb))
    outs, finals = run_spec("minmax_rnc", {"xa": xa, "xb": xb}, {"h": h0})
    assert_match(
        [("h", outs["h"], torch.stack(hs, 1)), ("final h", finals["h"], hs[-1])], [xa, xb, h0]
    )


def test_maxplus_matches_max_plus_semiring_fold() -> None:
    """h_t = max(h_0 + A_t, B_t) with (a2, b2) o (a1, b1) = (a1 + a2, max(b1 + a2, b2))."""
    B, T, D = 2, 12, 5  # noqa: N806
    xa, xb, h0 = rand(B, T, D), rand(B, T, D, scale=2.0), rand(B, D)
    a = -F.softplus(xa)
    ca, cb, hs = a[:, 0], xb[:, 0], []
    for t in range(T):
        if t:
            ca, cb = ca + a[:, t], torch.maximum(cb + a[:, t], xb[:, t])
        hs.append(torch.maximum(h0 + ca, cb))
    outs, finals = run_spec("maxplus", {"xa": xa, "xb": xb}, {"h": h0})
    assert_match(
        [("h", outs["h"], torch.stack(hs, 1)), ("final h", finals["h"], hs[-1])], [xa, xb, h0]
    )
    # Default h_0 = -inf (the semiring's zero): a running max of decayed candidates.
    outs, finals = run_spec("maxplus", {"xa": xa, "xb": xb})
    a = -F.softplus(xa)
    want = torch.stack(
        [
            torch.stack([xb[:, s] + a[:, s + 1 : t + 1].sum(1) for s in range(t + 1)]).amax(0)
            for t in range(T)
        ],
        1,
    )
    assert_match([("h from -inf", outs["h"], want)], [xa, xb])
