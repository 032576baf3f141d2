"""`fn.step`: one step at a time, for decoding (recc/backends/torch/decode.py).

Stepping a sequence token by token must give what one call over it gives:
outputs at every step and the final states, for every zoo spec and for
hypothesis-drawn specs of every class, gradients included; and a step checks its
arguments as a call does, its cached checks invalidated by a new tensor or an
in-place change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import recc
from recc.errors import RecError
from recc.testing.regimes import NORMAL
from recc.testing.strategies import spec_of
from tests.helpers.profiles import SLOW

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.rec"))
HEADS = {"gla", "retnet", "slstm"}


def stepped(fn, tensors: dict, init: dict, T: int):
    """(outputs `[B, T, ...]` as tuples, final states) by T calls of `fn.step`."""
    inputs = {i.name for i in fn.spec.inputs}
    state = tuple(init[s.name] for s in fn.spec.states) if init else None
    per_step = []
    for t in range(T):
        step_t = {k: v[:, t] if k in inputs else v for k, v in tensors.items()}
        out, state = fn.step(state, **step_t)
        per_step.append(out if isinstance(out, tuple) else (out,))
        state = state if isinstance(state, tuple) else (state,)
    outputs = tuple(torch.stack(o, dim=1) for o in zip(*per_step))
    return outputs, state


def full(fn, tensors: dict, init: dict):
    out, state = fn(**tensors, initial_state=init or None, output_final_state=True)
    return (out if isinstance(out, tuple) else (out,)), (
        state if isinstance(state, tuple) else (state,)
    )


def assert_same(got, want):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_stepping_a_zoo_spec_equals_one_call(path):
    fn = recc.compile(path)
    heads = 2 if fn.spec.name in HEADS else None
    tensors, init = NORMAL.call(fn.spec, 6, seed=3, heads=heads)
    got_out, got_state = stepped(fn, tensors, init, 6)
    want_out, want_state = full(fn, tensors, init)
    assert_same(got_out, want_out)
    assert_same(got_state, want_state)


def test_gradients_through_steps_equal_the_calls():
    fn = recc.compile(SPECS[0].parent / "lstm.rec")
    tensors, init = NORMAL.call(fn.spec, 5, seed=1)
    tensors = {k: v.requires_grad_() for k, v in tensors.items()}
    got, _ = stepped(fn, tensors, init, 5)
    want, _ = full(fn, tensors, init)
    w = torch.randn_like(want[0])
    g_got = torch.autograd.grad((got[0] * w).sum(), list(tensors.values()))
    g_want = torch.autograd.grad((want[0] * w).sum(), list(tensors.values()))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_a_step_checks_its_arguments_and_its_cache_sees_changes():
    fn = recc.compile(SPECS[0].parent / "gru.rec")
    tensors, _ = NORMAL.call(fn.spec, 1, seed=0)
    x = tensors.pop("x")[:, 0]
    y, h = fn.step(x=x, **tensors)  # the declared start
    y, h = fn.step(h, x=x, **tensors)  # checks cached for these shapes
    with pytest.raises(RecError, match="initial state 'h' has D=1, but"):
        fn.step(h[:, :1], x=x, **tensors)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(RecError, match="input 'x' contains NaN"):
        fn.step(h, x=bad, **tensors)
    fn.step(h, x=bad, **tensors, check_nan=False)
    weight = tensors["W_hz"]
    fn.step(h, x=x, **tensors)  # W_hz checked and found finite
    weight[0, 0] = float("nan")  # in place: its version moves on
    with pytest.raises(RecError, match="param 'W_hz' contains NaN"):
        fn.step(h, x=x, **tensors)
    weight[0, 0] = 0.0
    y, h = fn.step(h, x=x, **tensors)
    h[0, 0] = float("nan")  # the returned state, changed: checked again
    with pytest.raises(RecError, match="initial state 'h' contains NaN"):
        fn.step(h, x=x, **tensors)
    with pytest.raises(RecError, match="check_nan must be True or False"):
        fn.step(h, x=x, **tensors, check_nan=1)


def test_half_precision_steps_compute_in_fp32():
    fn = recc.compile(SPECS[0].parent / "mingru.rec")
    k, v = torch.randn(2, 8, dtype=torch.bfloat16), torch.randn(2, 8, dtype=torch.bfloat16)
    y, h = fn.step(k=k, v=v)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    want, state = fn(k=k[:, None], v=v[:, None], output_final_state=True)
    torch.testing.assert_close(y, want[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(h, state, rtol=0, atol=0)


NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def check_drawn(source: str, data) -> None:
    fn = recc.compile(source)
    T = data.draw(st.sampled_from([1, 3, 7]), label="T")
    heads = data.draw(st.sampled_from([None, 2]), label="heads")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    tensors, init = NORMAL.call(fn.spec, T, seed=seed, heads=heads)
    got_out, got_state = stepped(fn, tensors, init, T)
    want_out, want_state = full(fn, tensors, init)
    assert_same(got_out, want_out)
    assert_same(got_state, want_state)


@settings(SLOW, max_examples=12, phases=NO_SHRINK)
@given(case=st.data())
def test_stepping_drawn_specs_of_every_class_equals_one_call(case):
    source, _ = case.draw(spec_of(None))
    check_drawn(source, case)


@pytest.mark.slow
@settings(SLOW, max_examples=100, phases=NO_SHRINK)
@given(case=st.data())
def test_stepping_drawn_specs_of_every_class_equals_one_call_slow(case):
    source, _ = case.draw(spec_of(None))
    check_drawn(source, case)


def test_the_stacked_weights_follow_new_and_changed_weights():
    """The loop keeps GRU's stacked recurrent weights between calls without
    gradients; a weight changed in place, or a new one (even where a freed one
    was), must be restacked."""
    fn = recc.compile(SPECS[0].parent / "gru.rec")
    tensors, _ = NORMAL.call(fn.spec, 1, seed=0)
    x = tensors.pop("x")[:, 0]
    ref = recc.compile(SPECS[0].parent / "gru.rec", backend="interpreter")
    with torch.no_grad():
        for scale in (1.0, 2.0, 3.0):  # a new W_hz each time, the old one freed
            weights = {**tensors, "W_hz": tensors["W_hz"] * scale}
            y, _ = fn.step(x=x, **weights)
            want = ref(x=x[:, None], **weights)[:, 0]
            torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
        weights["W_hr"].mul_(0.5)  # in place
        y, _ = fn.step(x=x, **weights)
        torch.testing.assert_close(y, ref(x=x[:, None], **weights)[:, 0], rtol=1e-12, atol=1e-12)
