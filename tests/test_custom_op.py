"""A compiled recurrence inside `torch.compile(..., fullgraph=True)` and
`torch.func.vmap` (recc.custom_op: every traced call is one `recc::call` op).

One spec per lowering (the scan, MinMax, the matrix-state scan with heads, the
chunkwise DPLR form, a nonlinear spec's Newton/loop plan): traced with no graph
break (fullgraph=True), once for every length (dynamic shapes), values and
gradients equal to the eager call's. Most cases use the `aot_eager` backend (the
same tracing and autograd as inductor, no C++ compile); one compiles with
inductor. The NaN check keeps its meaning (it runs when the op runs), vmap folds
the vmapped dim into the batch, and meta tensors give shapes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import recc
from recc import custom_op
from recc.errors import RecError
from recc.testing.regimes import NORMAL

SPECS = Path(__file__).parent.parent / "specs"
ONE_PER_LOWERING = ["mingru", "maxplus", "gla", "gated_deltanet", "gru", "paralstm"]
HEADS = {"gla": 2, "gated_deltanet": 2}


def call_of(fn, T: int, seed: int, dtype=torch.float64):
    tensors, init = NORMAL.call(fn.spec, T, seed=seed, heads=HEADS.get(fn.spec.name))
    tensors = {k: v.to(dtype).requires_grad_() for k, v in tensors.items()}
    return tensors, {k: v.to(dtype) for k, v in init.items()}


@pytest.mark.parametrize("name", ONE_PER_LOWERING)
def test_fullgraph_dynamic_lengths_values_and_gradients(name):
    torch._dynamo.reset()
    fn = recc.compile(SPECS / f"{name}.rec")

    def f(tensors, init):
        return fn(**tensors, initial_state=init, output_final_state=True)

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, fullgraph=True, backend=counter, dynamic=True)
    compiles = []
    for T, seed in ((7, 1), (12, 2)):
        tensors, init = call_of(fn, T, seed)
        got = compiled(tensors, init)
        want = f(tensors, init)
        flat_got = [*torch.utils._pytree.tree_leaves(got)]
        flat_want = [*torch.utils._pytree.tree_leaves(want)]
        for a, b in zip(flat_got, flat_want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        w = [torch.randn_like(b) for b in flat_want]
        leaves = list(tensors.values())
        g_got = torch.autograd.grad(sum((a * x).sum() for a, x in zip(flat_got, w)), leaves)
        g_want = torch.autograd.grad(sum((b * x).sum() for b, x in zip(flat_want, w)), leaves)
        for a, b in zip(g_got, g_want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        compiles.append(counter.frame_count)
    # fullgraph=True: no graph break; the second length compiled nothing new
    assert compiles[0] >= 1 and compiles[1] == compiles[0], compiles


def test_inductor_compiles_a_model_around_a_recurrence():
    torch._dynamo.reset()
    fn = recc.compile(SPECS / "mingru.rec")
    proj = torch.nn.Linear(6, 8)

    def model(x):
        k, v = proj(x).chunk(2, dim=-1)
        return torch.tanh(fn(k=k, v=v)).sum()

    x = torch.randn(2, 9, 6, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    loss = compiled(x)
    (got,) = torch.autograd.grad(loss, x)
    (want,) = torch.autograd.grad(model(x), x)
    torch.testing.assert_close(loss, model(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_nan_check_runs_when_the_compiled_op_runs():
    torch._dynamo.reset()
    fn = recc.compile(SPECS / "mingru.rec")
    compiled = torch.compile(lambda k, v, c: fn(k=k, v=v, check_nan=c), fullgraph=True,
                             backend="aot_eager")  # fmt: skip
    x = torch.randn(2, 5, 4)
    x[0, 1, 2] = float("nan")
    with pytest.raises(RecError, match="input 'k' contains NaN"):
        compiled(x, x.abs(), True)
    y = compiled(x, x.abs(), False)
    assert y[0, 1:, 2].isnan().all() and y[1].isfinite().all()


def test_a_wrong_shape_under_compile_names_the_mistake():
    torch._dynamo.reset()
    fn = recc.compile(SPECS / "mingru.rec")
    compiled = torch.compile(lambda k, v: fn(k=k, v=v), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="input 'v' has D=3, but input 'k' has D=4"):
        compiled(torch.randn(2, 5, 4), torch.randn(2, 5, 3))


def test_vmap_folds_into_the_batch_and_a_vmapped_param_runs_per_slice():
    fn = recc.compile(SPECS / "mingru.rec")
    k, v = (torch.randn(3, 2, 7, 4, dtype=torch.float64) for _ in range(2))
    got = torch.func.vmap(lambda k, v: fn(k=k, v=v))(k, v)
    want = torch.stack([fn(k=k[i], v=v[i]) for i in range(3)])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got = torch.func.vmap(lambda k: fn(k=k, v=v[0]), in_dims=2)(k.movedim(0, 2))
    want = torch.stack([fn(k=k[i], v=v[0]) for i in range(3)])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    gru = recc.compile(SPECS / "gru.rec")
    tensors, _ = NORMAL.call(gru.spec, 5, seed=0)
    weights = torch.stack([tensors["W_hr"], 2 * tensors["W_hr"]])
    got = torch.func.vmap(lambda w: gru(**{**tensors, "W_hr": w}))(weights)
    want = torch.stack([gru(**{**tensors, "W_hr": w}) for w in weights])
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_meta_tensors_give_shapes_and_dtypes():
    fn = recc.compile(SPECS / "gla.rec")
    tensors = {
        i.name: torch.empty(2, 100, 3, 16 if i.dims == ("K",) else 8, device="meta",
                            dtype=torch.bfloat16)
        for i in fn.spec.inputs
    }  # fmt: skip
    y, h = fn(**tensors, output_final_state=True)
    assert y.device.type == "meta" and y.shape == (2, 100, 3, 8) and y.dtype == torch.bfloat16
    assert h.shape == (2, 3, 16, 8) and h.dtype == torch.float32  # states in fp32


@pytest.mark.parametrize("name", ["mingru", "gla", "gru"])
def test_torch_library_opcheck(name):
    """torch's own checks of a custom op: schema, fake tensors (shapes, dtypes,
    strides), the autograd registration, and AOT dispatch with dynamic shapes."""
    fn = recc.compile(SPECS / f"{name}.rec")
    tensors, init = call_of(fn, 5, seed=0)
    args = (fn._key, ",".join(tensors), list(tensors.values()), ",".join(init),
            list(init.values()), True, None)  # fmt: skip
    results = torch.library.opcheck(custom_op.call, args)
    assert set(results.values()) == {"SUCCESS"}, results
