"""Generated Triton scan kernels: interpreter runs, ahead-of-time compiles, traffic.

Every diagonal and MinMax zoo spec gets a kernel. Under TRITON_INTERPRET=1
(tests/conftest.py) the kernels run on CPU tensors at tiny shapes, with the
vectorised interpreter scan of recc.testing.triton_interpreter; each must match
the interpreter (fp64: to round-off; fp32: 1e-5 relative). Every kernel must
also compile for sm_80 and sm_90 at its default tile sizes with 0 spill
bytes, and move no more than 1.1x the minimum global bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):  # pragma: no cover - conftest sets it
    pytest.skip("Triton kernels need TRITON_INTERPRET=1 here (no GPU)", allow_module_level=True)

import recc  # noqa: E402
from recc.analysis import analyze  # noqa: E402
from recc.backends.triton.aot import compile_reports  # noqa: E402
from recc.backends.triton.function import triton_scan  # noqa: E402
from recc.backends.triton.launch import ScanKernel, block_sizes, compile_jobs  # noqa: E402
from recc.backends.triton.scan_codegen import Unsupported  # noqa: E402
from recc.interpreter import run  # noqa: E402
from recc.ir import load  # noqa: E402
from recc.lowering import plan  # noqa: E402
from recc.signature import bind  # noqa: E402
from recc.testing.agree import disagreements  # noqa: E402
from recc.testing.triton_interpreter import fast_scan  # noqa: E402
from recc.testing.triton_traffic import count_traffic  # noqa: E402

SPECS = sorted(Path(__file__).parent.parent.joinpath("specs").glob("*.rec"))


def _kernel(path):
    rec = load(path)
    analysis = analyze(rec)
    facts = plan(rec, analysis).scan
    if facts is None:
        return rec, analysis, None
    try:
        return rec, analysis, ScanKernel(facts)
    except Unsupported:
        return rec, analysis, None


KERNELS = {p.stem: _kernel(p) for p in SPECS}
WITH_KERNEL = sorted(name for name, (_, _, k) in KERNELS.items() if k is not None)


@pytest.fixture(autouse=True)
def _fast_interpreter_scan():
    with fast_scan():
        yield


def _call(rec, T, D, B=2, heads=None, dtype=torch.float64, seed=0, positive=True):
    g = torch.Generator().manual_seed(seed)
    sizes = {d: D + i for i, d in enumerate(rec.dims)}
    lead = (B, T) + ((heads,) if heads else ())

    def draw(*shape):
        if positive:
            return (torch.rand(shape, generator=g, dtype=torch.float64) * 0.9 + 0.05).to(dtype)
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 0.5).to(dtype)

    tensors = {i.name: draw(*lead, *(sizes[d] for d in i.dims)) for i in rec.inputs}
    tensors.update({p.name: draw(*(sizes[d] for d in p.dims)) for p in rec.params})
    init = {
        s.name: draw(B, *((heads,) if heads else ()), *(sizes[d] for d in s.dims)).float()
        if dtype != torch.float64
        else draw(B, *((heads,) if heads else ()), *(sizes[d] for d in s.dims))
        for s in rec.states
    }
    return tensors, init


def _compare(got, want, rtol, atol):
    for name in want:
        torch.testing.assert_close(got[name].to(want[name].dtype), want[name], rtol=rtol, atol=atol)


def _agrees(rec, analysis, executor, tensors, init, elementwise, gradients):
    """recc.testing.agree's comparison (`recc check`'s), each value also held to
    elementwise = (rtol, atol) of its own size."""
    found = disagreements(
        rec,
        analysis,
        executor,
        tensors,
        init,
        gradients=gradients,
        elementwise=elementwise,
        finite=True,
    )
    assert not found, "; ".join(map(str, found))


def test_every_scan_spec_has_a_kernel():
    scan_specs = {n for n, (_, a, _) in KERNELS.items() if a.kind in ("diagonal", "minmax")}
    assert set(WITH_KERNEL) == scan_specs and len(scan_specs) == 15


@pytest.mark.parametrize("T", [1, 17, 64, 100])
@pytest.mark.parametrize("name", WITH_KERNEL)
def test_fp64_matches_interpreter(name, T):
    rec, analysis, kernel = KERNELS[name]
    for D in (3, 16):
        tensors, init = _call(rec, T, D, seed=T + D)

        def forward(given, start):
            return kernel(bind(rec, given, start))

        _agrees(rec, analysis, forward, tensors, init, (1e-10, 1e-12), gradients=False)


@pytest.mark.parametrize("T", [1, 17, 64])
@pytest.mark.parametrize("name", WITH_KERNEL)
def test_fp64_gradients_of_the_generated_backward(name, T):
    """Every input, param and initial state, against autograd through the interpreter."""
    rec, analysis, kernel = KERNELS[name]
    tensors, init = _call(rec, T, 5, seed=T)

    def differentiable(given, start):
        return triton_scan(plan(rec, analysis).scan, kernel, given, start)

    _agrees(rec, analysis, differentiable, tensors, init, (1e-9, 1e-11), gradients=True)


@pytest.mark.parametrize("name", WITH_KERNEL)
def test_fp32_heads_and_gradients(name):
    rec, analysis, kernel = KERNELS[name]
    tensors, init = _call(rec, 23, 4, heads=3, dtype=torch.float32)
    leaves = {k: v.clone().requires_grad_() for k, v in {**tensors, **init}.items()}
    given = {k: leaves[k] for k in tensors}
    start = {k: leaves[k] for k in init}
    out_k, fin_k = triton_scan(plan(rec, analysis).scan, kernel, given, start)
    wide = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    bound = bind(rec, {k: wide[k] for k in tensors}, {k: wide[k] for k in init})
    out_i, fin_i = run(rec, bound)
    _compare(
        {k: v.detach() for k, v in out_k.items()},
        {k: v.detach() for k, v in out_i.items()},
        1e-5,
        1e-5,
    )
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in out_i.values()]
    loss_k = sum((x.double() * w).sum() for x, w in zip(out_k.values(), weights))
    loss_i = sum((x * w).sum() for x, w in zip(out_i.values(), weights))
    grads_k = torch.autograd.grad(loss_k, list(leaves.values()), allow_unused=True)
    grads_i = torch.autograd.grad(loss_i, list(wide.values()), allow_unused=True)
    for key, gk, gi in zip(leaves, grads_k, grads_i):
        if gi is None:
            continue
        torch.testing.assert_close(gk.double(), gi, rtol=1e-4, atol=1e-4, msg=key)


def test_low_precision_and_non_contiguous_inputs():
    rec, analysis, kernel = KERNELS["mamba_s6"]
    tensors, init = _call(rec, 40, 8, dtype=torch.float32, positive=False)
    tensors["A"] = -tensors["A"].abs()  # a decaying state, as in Mamba
    reference, _ = run(rec, bind(rec, tensors, init))
    for dtype, tol in ((torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
        low = {}
        for k, v in tensors.items():
            v = v.to(dtype)
            if v.dim() >= 3:  # a transposed copy: same values, non-contiguous strides
                v = v.transpose(0, 1).contiguous().transpose(0, 1)
                assert not v.is_contiguous()
            low[k] = v
        out, fin = kernel(bind(rec, low, init))
        assert out["y"].dtype == dtype and fin["h"].dtype == torch.float32
        torch.testing.assert_close(out["y"].float(), reference["y"], rtol=tol, atol=tol)


def test_compile_picks_triton_only_when_asked_on_cpu():
    fn = recc.compile(SPECS[0].parent / "mingru.rec", backend="triton")
    k, v = torch.randn(2, 9, 5), torch.randn(2, 9, 5)
    y_triton = fn(k=k, v=v)
    y_torch = recc.compile(SPECS[0].parent / "mingru.rec")(k=k, v=v)
    torch.testing.assert_close(y_triton, y_torch, rtol=1e-6, atol=1e-6)
    assert recc.compile(SPECS[0].parent / "mingru.rec").backend_for(k.device) == "torch"


@pytest.mark.parametrize("name", WITH_KERNEL)
def test_forward_traffic_is_inputs_once_plus_outputs(name):
    """Global bytes moved vs the minimum: every input read once (an input without the
    split dim once per channel block), params and the initial state once per program,
    outputs and the final state written once."""
    rec, analysis, kernel = KERNELS[name]
    tensors, init = _call(rec, 96, 16, B=1, dtype=torch.float32)
    bound = bind(rec, tensors, init)
    plan = kernel.plan
    blocks = block_sizes(plan, bound.sizes)
    n_cb = 1 if plan.blocked is None else -(-bound.sizes[plan.blocked] // blocks[plan.blocked])

    def per_block(dims) -> int:  # read by every channel block, or split among them
        return 1 if plan.blocked in dims else n_cb

    minimum = 0
    for name_, dims in plan.inputs:
        minimum += tensors[name_].numel() * tensors[name_].element_size() * per_block(dims)
    for name_, dims in plan.params:  # once per program of its channel block
        minimum += tensors[name_].numel() * 4 * per_block(dims) * bound.B
    for name_, dims in plan.states:  # initial state read, final state written
        minimum += 2 * init[name_].numel() * 4 * per_block(dims)
    with count_traffic() as traffic:
        outputs, finals = kernel(bound)
    written = sum(x.numel() * x.element_size() for x in outputs.values())
    minimum += written
    moved = traffic.bytes_read + traffic.bytes_written
    assert moved <= 1.1 * minimum, (moved, minimum)


def test_generated_kernels_compile_for_sm80_and_sm90_without_spills():
    jobs, names = [], []
    for name in WITH_KERNEL:
        for arch in (80, 90):
            jobs.extend(compile_jobs(KERNELS[name][2], arch))
            names += [(name, arch, "fwd"), (name, arch, "fwd+ckpt"), (name, arch, "bwd")]
    for where, report in zip(names, compile_reports(jobs)):
        assert report.spill_store_bytes == 0 and report.spill_load_bytes == 0, (where, report)
        assert report.registers > 0 and report.fits_shared_memory, (where, report)


def test_generated_source_points_back_to_the_spec():
    rec, _, kernel = KERNELS["mingru"]
    assert (
        "# let let    z = sigmoid(k)" in kernel.source or "let    z = sigmoid(k)" in kernel.source
    )
    assert "tl.associative_scan" in kernel.source
    assert "# output output h" in kernel.source or "output h" in kernel.source


# Every pattern of present and absent coefficients a diagonal block can have: a scan of
# one operand (only a, only b), no scan (the update reads no state), identity updates,
# partial 2x2 blocks. A scan of one operand once generated `A = tl.associative_scan((x,))`
# (a 1-tuple, not a tensor): the random specs of test_backend_properties found it once.
COEFFICIENT_PATTERNS = {
    "only_a": "update h = a * h",
    "only_b": "update h = x",
    "identity": "update h = h",
    "a_and_b": "update h = a * h + x",
    "triangle_no_b": "update h = a * h\n update g = h + a * g",
    "swap": "update h = g\n update g = h",
    "coupled_no_b": "update h = a * g\n update g = a * h + g",
}


@pytest.mark.parametrize("name", sorted(COEFFICIENT_PATTERNS))
def test_every_coefficient_pattern_runs_as_the_interpreter(name):
    from recc.verify import check

    update = COEFFICIENT_PATTERNS[name]
    states = "state h[D] = 0.5" + ("\n state g[D] = -0.25" if " g" in update else "")
    outputs = "output h" + ("\n output g" if " g" in update else "")
    rec = load(
        f"recurrence {name} {{\n dims D\n input a[D]\n input x[D]\n {states}\n"
        f" {update}\n {outputs}\n}}"
    )
    result = check(rec, lengths=(13,), backends=("triton",))
    assert "triton" in result.checked, result.skipped
    assert result.ok, [str(f) for f in result.failures]


# Found by tests/test_backend_properties.py: the kernels computed tanh as
# 2 * sigmoid(2x) - 1, which loses relative precision near 0 (tanh(-7.8e-7) off by
# 1.3e-10 in fp64), and a state growing 1.6x a step carried it into a gradient.
UNARY_MODULE = """import triton
import triton.language as tl


{helpers}

@triton.jit
def unary(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    m = i < n
    x = tl.load(x_ptr + i, mask=m)
{stores}
"""


POW_EXPONENTS = (0.0, 1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -4.0, 0.5, -0.5, 1.5, -2.5, 3.5)
# through exp(p * log|x|): relative error about |p * log(x)| ulps (docs/language.md)
POW_EXP_LOG = (5.0, 6.0, -7.0, 1 / 3, -0.75, 2.2)


def test_unary_functions_keep_torchs_precision():
    from recc.backends.triton.cache import load_module
    from recc.backends.triton.tile import HELPERS, PRINT, _pow, exact_pow
    from recc.ir.ops import ELEMENTWISE, OPS

    # every one-operand op of the table, and pow at each way it is printed
    unary = sorted(op for op in ELEMENTWISE if OPS[op].arity == 1)
    columns = [(op, PRINT[op].format("x"), OPS[op].torch, 0.0) for op in unary]
    for p in POW_EXPONENTS + POW_EXP_LOG:
        columns.append((f"pow(x, {p})", _pow("x", p), lambda x, p=p: torch.pow(x, p), p))
    stores = "\n".join(
        f"    tl.store(out_ptr + {k} * BLOCK + i, {text}, mask=m)"
        for k, (_, text, _, _) in enumerate(columns)
    )
    module = load_module(UNARY_MODULE.format(helpers=HELPERS, stores=stores), stem="unary_test")
    magnitudes = [0.0, 1e-300, 1e-30, 1e-12, 7.8e-7, 1e-3, 0.3, 0.55, 0.7, 1.0, 2.0, 8.0]
    magnitudes += [17.0, 19.99, 20.0, 20.01, 30.0, 200.0, 800.0, float("inf")]
    for dtype, ulps in ((torch.float64, 2.2e-16), (torch.float32, 1.2e-7)):
        x = torch.tensor(magnitudes + [-v for v in magnitudes] + [float("nan")], dtype=dtype)
        block = 1 << (x.numel() - 1).bit_length()
        out = torch.zeros(len(columns), block, dtype=dtype)
        with np_errstate():
            module.unary[(1,)](x, out, x.numel(), BLOCK=block)
        for k, (op, _, torch_fn, p) in enumerate(columns):
            got, want = out[k, : x.numel()], torch_fn(x)
            same = (got == want) | (torch.isnan(got) & torch.isnan(want))
            # a few units in the last place, relative to the value (and to the smallest
            # normal number where the value is subnormal)
            tiny = torch.finfo(dtype).tiny
            units = torch.full_like(x, 4.0)
            if p and not exact_pow(p):
                units = units + (p * torch.log(x.abs())).abs()
            scale = torch.maximum(want.abs(), torch.tensor(tiny))
            close = (got - want).abs() <= units * ulps * scale
            bad = ~(same | (torch.isfinite(want) & close))
            assert not bad.any(), (
                f"{op} ({dtype}) at {x[bad].tolist()}: got {got[bad].tolist()}, "
                f"torch {want[bad].tolist()}"
            )


def np_errstate():
    import numpy

    return numpy.errstate(all="ignore")  # exp overflow in branches tl.where discards


# The ops added through the op table (cos, sin, log_sigmoid, exp2, pow), in gates,
# injections, the readout and a MinMax bound: their forward is the table's torch and
# their backward the table's vjp, printed by the Triton printer.
NEW_OPS = {
    "diagonal": (
        "let a = sigmoid(p) * cos(x) * exp2(-softplus(q))\n"
        " update h = a * h + log_sigmoid(x) + pow(sin(x), 2) + pow(abs(x) + 1, -1.5)\n"
        " output y = pow(h, 3) + sin(h)"
    ),
    "minmax": "update h = max(min(h, exp2(x)), log_sigmoid(x) + pow(abs(x), 0.5))\n output h",
}


@pytest.mark.parametrize("name", sorted(NEW_OPS))
def test_ops_added_through_the_table_run_as_the_interpreter(name):
    from recc.verify import check

    rec = load(
        f"recurrence {name} {{\n dims D\n input x[D]\n param p[D], q[D]\n state h[D] = 0.5\n"
        f" {NEW_OPS[name]}\n}}"
    )
    assert analyze(rec).kind == name
    result = check(rec, lengths=(13,), backends=("triton",))
    assert "triton" in result.checked, result.skipped
    assert result.ok, [str(f) for f in result.failures]


# A constant first operand of max/min: its tie rule (which operand the gradient takes)
# compares a Python float against a tile, with no NaN test (a spec constant is never NaN).
# In a gate of a 1-d state, of a matrix state's broadcast gate, and in a MinMax bound.
CONSTANT_FIRST = {
    "vector": "update h = max(0.5, log_sigmoid(x)) * h + min(2, x)\n output y = max(-1, h)",
    "matrix": (
        "update S = max(0.5, log_sigmoid(p @ u)) * S + min(1, outer(x, u))\n output y = S @ u"
    ),
    "minmax": "update h = max(min(h, max(0.25, x)), min(-0.5, x))\n output h",
}


@pytest.mark.parametrize("name", sorted(CONSTANT_FIRST))
def test_max_and_min_with_a_constant_first_operand(name):
    from recc.verify import check

    state = "state S[D, E] = 0.5" if name == "matrix" else "state h[D] = 0.5"
    rec = load(
        f"recurrence c_{name} {{\n dims D, E\n input x[D], u[E]\n param p[D, E]\n"
        f" {state}\n {CONSTANT_FIRST[name]}\n}}"
    )
    result = check(rec, lengths=(13,), backends=("triton",))
    assert "triton" in result.checked, result.skipped
    assert result.ok, [str(f) for f in result.failures]
