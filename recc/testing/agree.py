"""Does an executor agree with the interpreter? Values, final states and gradients.

Stage: top level (runs the interpreter and the backends). One comparison for
`recc check`, the tests and the fuzz campaign:

  - the positions of NaN, +inf and -inf must be the same;
  - finite values must agree to `tolerance` relative to the tensor's largest
    finite magnitude (normwise, so a regime of tiny values is held to the same
    relative standard as one of huge values);
  - gradients (of a fixed random projection of every output and final state,
    with respect to every input, param and initial state) likewise; a tensor
    the recurrence does not read has gradient 0 on both sides.

Three places where IEEE arithmetic itself gives no one answer, so no order of
evaluation is more right than another:

  - overflow: once the interpreter's own results reach +-inf from finite
    inputs (or in a regime of huge values), a scan and the loop reach inf at
    different steps and inf - inf is NaN; outputs are compared up to the first
    step that is not finite, final states and gradients not at all;
  - a NaN result: the loss is then NaN, and IEEE's 0 * NaN reaches every
    tensor the computation graph connects to it, through derivatives that are
    exactly 0 (`h - h`) in one graph and absent in another; gradients are
    compared only where the interpreter's outputs and final states hold no NaN;
  - a singular derivative (sqrt at 0 is inf): a gradient summed over steps is
    `sum_t r_t * inf` (NaN when signs mix) in one order and `inf * sum_t r_t`
    (+-inf) in another; in gradients, +-inf against NaN counts as the same
    singular value. Finite against non-finite never does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from recc.analysis.forms import Analysis
from recc.backends.protocol import Call, Options
from recc.backends.registry import backend_named
from recc.ir.nodes import Const, Expr, Recurrence
from recc.lowering import plan
from recc.signature import bind

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@dataclass(frozen=True)
class Disagreement:
    """Where and how a result differs from the interpreter's."""

    what: str  # e.g. "output y", "final state h", "gradient of x"
    detail: str

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}"


def _where(mask: torch.Tensor) -> list[int]:
    return [int(i) for i in mask.nonzero()[0]]


_EXACT = (
    ("NaN", torch.isnan),
    ("+inf", lambda x: x == float("inf")),
    ("-inf", lambda x: x == float("-inf")),
)


def compare(
    what: str,
    reference: torch.Tensor,
    got: torch.Tensor,
    tolerance: float,
    singular: bool = False,
    elementwise: tuple[float, float] | None = None,
):
    """The first way `got` differs from `reference`, or None.

    `singular` (gradients): +-inf and NaN are one pattern (see the module's doc).

    Finite values agree when |got - ref| <= tolerance * (scale + 1e-3), with
    `scale` the tensor's largest finite reference magnitude: relative to the
    tensor, with a floor for results that are pure rounding (a gradient that
    cancels to 0 is 1e-16 in one order of summation, 0 in another).

    `elementwise` = (rtol, atol): each finite value must also agree to
    |got - ref| <= atol + rtol * |ref| (torch.testing.assert_close's rule), a
    second bound on top of the first, so it can only make the check stricter:
    for tests that hold small values to more than the tensor's scale."""
    if got.shape != reference.shape:
        return Disagreement(what, f"shape {list(got.shape)}, expected {list(reference.shape)}")
    if got.dtype != reference.dtype:
        return Disagreement(what, f"dtype {got.dtype}, expected {reference.dtype}")
    ref, got = reference.detach().double(), got.detach().double()
    if singular:
        same = (torch.isnan(ref) & torch.isinf(got)) | (torch.isinf(ref) & torch.isnan(got))
        ref = torch.where(same, torch.full_like(ref, float("nan")), ref)
        got = torch.where(same, torch.full_like(got, float("nan")), got)
    for name, test in _EXACT:
        differ = test(ref) != test(got)
        if differ.any():
            at = _where(differ)
            index = tuple(at)
            return Disagreement(
                what,
                f"{name} pattern differs at {at}: interpreter {ref[index].item()}, "
                f"got {got[index].item()}",
            )
    finite = torch.isfinite(ref)
    if not finite.any():
        return None
    scale = float(ref[finite].abs().max()) + 1e-3
    error = torch.where(finite, (got - ref).abs(), torch.zeros_like(ref)) / scale
    worst = float(error.max())
    if worst > tolerance:
        at = _where(error == error.max())
        index = tuple(at)
        return Disagreement(
            what,
            f"relative error {worst:.1e} at {at} (interpreter {ref[index].item()!r}, "
            f"got {got[index].item()!r}; tolerance {tolerance:g})",
        )
    if elementwise is not None:
        rtol, atol = elementwise
        bound = atol + rtol * ref.abs()
        excess = torch.where(finite, (got - ref).abs() - bound, torch.zeros_like(ref))
        if bool((excess > 0).any()):
            at = _where(excess == excess.max())
            index = tuple(at)
            return Disagreement(
                what,
                f"error {abs(got[index].item() - ref[index].item()):.1e} at {at} over "
                f"atol + rtol * |ref| = {bound[index].item():.1e} (interpreter "
                f"{ref[index].item()!r}, got {got[index].item()!r}; rtol {rtol:g}, atol {atol:g})",
            )
    return None


def run(
    rec: Recurrence,
    analysis: Analysis,
    backend: str | Callable,
    tensors,
    init,
    device=None,
    options: Options | None = None,
):
    """(outputs, finals) of one executor on the given tensors (which it may differentiate).

    `backend`: a name of `recc.backends.registry`, "auto" for the public entry
    point (`recc.compile(...)`'s callable: the binder, the dispatch and whichever
    executor it picks), or a callable `(tensors, init) -> (outputs, finals)` by
    name (a backend's parts called directly, e.g. a chunk length or kernel the
    registry does not choose, or a module `recc build` wrote). `device`: run
    there (the tensors are moved, differentiably, and the results brought back).
    `options`: what the named backend is prepared with (default `Options()`)."""
    if device is not None:
        home = {k: v.device for k, v in {**tensors, **init}.items()}
        moved = run(
            rec,
            analysis,
            backend,
            {k: v.to(device) for k, v in tensors.items()},
            {k: v.to(device) for k, v in init.items()},
            options=options,
        )
        back = next(iter(home.values()), torch.device("cpu"))
        return tuple({k: v.to(back) for k, v in d.items()} for d in moved)
    if callable(backend):
        return backend(tensors, init)
    if backend == "auto":
        if options is not None:
            raise ValueError("options= applies to a named backend, not to 'auto'")
        from recc.api import CompiledRecurrence

        fn = CompiledRecurrence(rec, "auto")
        values, states = fn(
            **tensors, initial_state=init or None, output_final_state=True, check_nan=False
        )
        values = values if len(rec.outputs) > 1 else (values,)
        states = states if len(rec.states) > 1 else (states,)
        return (
            {o.name: v for o, v in zip(rec.outputs, values)},
            {s.name: v for s, v in zip(rec.states, states)},
        )
    lowering = plan(rec, analysis)
    chosen = backend_named(backend)
    reason = chosen.supports(lowering)
    if reason is not None:
        raise ValueError(f"backend {backend!r} declines {rec.name!r}: {reason}")
    bound = bind(rec, tensors, init, check_nan=False)
    return chosen.prepare(lowering, options or Options())(Call(bound, tensors, init))


def _results(
    rec, analysis, backend, tensors, init, seed, device=None, options=None, gradients=True
):
    leaves = {k: v.clone().requires_grad_(gradients) for k, v in {**tensors, **init}.items()}
    outputs, finals = run(
        rec,
        analysis,
        backend,
        {k: leaves[k] for k in tensors},
        {k: leaves[k] for k in init},
        device,
        options,
    )
    named = [(f"output {k}", v) for k, v in outputs.items()]
    named += [(f"final state {k}", v) for k, v in finals.items()]
    if not gradients:
        return [(what, value.detach()) for what, value in named]
    g = torch.Generator().manual_seed(seed + 1)
    loss = sum(
        (r * torch.randn(r.shape, generator=g, dtype=torch.float64).to(r.dtype)).sum()
        for _, r in named
    )
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    else:  # the results read no input, param or initial state
        grads = (None,) * len(leaves)
    named += [
        (f"gradient of {k}", torch.zeros_like(x) if d is None else d)
        for (k, x), d in zip(leaves.items(), grads)
    ]
    return [(what, value.detach()) for what, value in named]


def disagreements(
    rec: Recurrence,
    analysis: Analysis,
    backend: str | Callable,
    tensors: dict[str, torch.Tensor],
    init: dict[str, torch.Tensor],
    seed: int = 0,
    reference=None,
    until_overflow: bool = False,
    device=None,
    *,
    options: Options | None = None,
    gradients: bool = True,
    tolerance: float | None = None,
    elementwise: tuple[float, float] | None = None,
    finite: bool = False,
) -> list[Disagreement]:
    """How `backend` differs from the interpreter on one call (empty: it agrees).

    `reference`: the interpreter's results for this call, if already computed.
    `until_overflow` (regimes of huge values): where the interpreter's own
    results are not finite, compare the outputs only before the first step that
    is not finite, and the final states and gradients only if nothing
    overflowed; past that point no order of evaluation is more right than
    another (a scan and the loop reach inf at different steps, and inf - inf is
    NaN). Any call of finite values into a spec that writes no `inf` is treated
    so once the interpreter's results hold an inf. `device`: where `backend` runs
    (default: where the tensors are). `backend`, `options`: as `run` takes them.

    For tests that check more narrowly; none can make the check looser:
    `gradients=False`: values and final states only (`reference` then holds no
    gradients either). `tolerance`: a normwise tolerance below TOLERANCE's for the
    dtype (a larger one is a ValueError). `elementwise` = (rtol, atol): a bound
    on each value besides the normwise one (see `compare`). `finite`: the
    interpreter's results and gradients must all be finite (a call whose
    results IEEE leaves open is then itself a disagreement, not skipped)."""
    dtype = next(iter(tensors.values())).dtype
    default = TOLERANCE.get(dtype, 1e-2)
    if tolerance is None:
        tolerance = default
    elif not 0 <= tolerance <= default:
        raise ValueError(
            f"tolerance={tolerance:g} is looser than agree's {default:g} for {dtype}; "
            "a test may only tighten the comparison"
        )
    if reference is None:
        reference = interpreter_results(rec, analysis, tensors, init, seed, gradients)
    if finite:
        open_ = [what for what, v in reference if not bool(torch.isfinite(v).all())]
        if open_:
            return [Disagreement(what, "the interpreter's result is not finite") for what in open_]
    candidate = _results(rec, analysis, backend, tensors, init, seed, device, options, gradients)
    names = [what for what, _ in candidate]
    if names != [what for what, _ in reference]:  # e.g. a callable executor's own names
        expected = [what for what, _ in reference]
        return [Disagreement("results", f"{names}, expected {expected}")]
    results = [v for what, v in reference if not what.startswith("gradient")]
    if not until_overflow and finite_call(rec, tensors, init):
        until_overflow = any(bool(torch.isinf(v).any()) for v in results)
    stop = _first_overflow(reference) if until_overflow else None
    nan_results = any(bool(torch.isnan(v).any()) for v in results)
    found = []
    for (what, ref), (_, got) in zip(reference, candidate):
        gradient = what.startswith("gradient")
        if stop is not None:
            if not what.startswith("output "):
                continue
            ref, got = ref[:, :stop], got[:, :stop]
        if gradient and nan_results:
            continue
        d = compare(what, ref, got, tolerance, singular=gradient, elementwise=elementwise)
        if d is not None:
            found.append(d)
    return found


def finite_call(rec: Recurrence, tensors, init) -> bool:
    """Every input, param and initial state finite (declared starts included), and
    no `inf` written in the spec: an inf in the results is then an overflow."""
    given = [*tensors.values(), *init.values()]
    declared = [s.init for s in rec.states if s.name not in init]
    definitions = (*rec.lets, *rec.updates, *rec.outputs)
    return (
        all(bool(torch.isfinite(x).all()) for x in given)
        and all(math.isfinite(v) for v in declared)
        and all(_finite_constants(d.expr) for d in definitions)
    )


def _finite_constants(expr: Expr) -> bool:
    if isinstance(expr, Const):
        return math.isfinite(expr.value)
    return all(_finite_constants(a) for a in getattr(expr, "args", ()))


def _first_overflow(reference) -> int | None:
    """The first step at which an output of the interpreter is not finite (0 if only a
    final state is), or None if every output and final state is finite."""
    steps = []
    for what, value in reference:
        if what.startswith("gradient") or bool(torch.isfinite(value).all()):
            continue
        if what.startswith("output "):
            bad = ~torch.isfinite(value.reshape(value.shape[0], value.shape[1], -1))
            steps.append(int(bad.any(-1).any(0).nonzero()[0]))
        else:  # a state overflowed that no output shows: nothing is comparable
            steps.append(0)
    return min(steps) if steps else None


def well_conditioned(
    rec: Recurrence, analysis: Analysis, tensors, init, reference, seed: int = 0, margin=10.0
) -> bool:
    """Whether the interpreter's own results for this call are determined to a
    `margin`-th of agree's tolerance: rerun with every input, param and initial state
    perturbed by one rounding unit (relative, random signs, then the opposite ones), the
    results and gradients must agree with `reference` to TOLERANCE / margin.

    A call that fails this is ill-conditioned (an expansive, non-normal product of
    maps: the state grows to 1e130 in 37 steps; or a max whose operands tie by a
    coincidence of rounding, whose gradient's routing one ulp decides), and no
    evaluation order is more right than another to within the tolerance: the loop's
    own answer moves more under a one-ulp change of its inputs than the tolerance
    allows. Property tests
    over drawn specs set such calls aside (`hypothesis.assume`) instead of judging
    them."""
    dtype = next(iter(tensors.values())).dtype
    tolerance = TOLERANCE.get(dtype, 1e-2) / margin
    unit = torch.finfo(dtype).eps
    g = torch.Generator().manual_seed(seed + 7919)
    signs = {
        k: torch.randint(0, 2, v.shape, generator=g).to(v.dtype) * 2 - 1
        for k, v in {**tensors, **{("init", k): v for k, v in init.items()}}.items()
    }

    def nudged(key, x: torch.Tensor, direction: float) -> torch.Tensor:
        return x * (1 + unit * direction * signs[key])

    # one nudge and its opposite: a quantity the call compares (a max's operands that
    # tie) moves one way in one of them, so a routing that hangs on it flips
    for direction in (1.0, -1.0):
        moved_tensors = {k: nudged(k, v, direction) for k, v in tensors.items()}
        moved_init = {k: nudged(("init", k), v, direction) for k, v in init.items()}
        moved = interpreter_results(rec, analysis, moved_tensors, moved_init, seed)
        for (what, ref), (_, got) in zip(reference, moved):
            if compare(what, ref, got, tolerance, singular=what.startswith("gradient")):
                return False
    return True


def exact_values(reference) -> bool:
    """Whether every output and final state of the interpreter's `reference` is an
    integer (or infinite). In the integers regime the call's values were then computed
    exactly, in every order, and a tie between a max's operands is a tie in every
    evaluation order: the tie rule decides the routing, and a backend must follow it.
    Where some value is not an integer (a tanh of an integer input), a tie can be a
    coincidence of rounding, `(c + tanh(1)) - tanh(1)` against c, and the call is
    judged as any other (`well_conditioned`)."""
    for what, value in reference:
        if what.startswith("gradient"):
            continue
        finite = value[torch.isfinite(value)]
        if not torch.equal(finite, torch.round(finite)):
            return False
    return True


def interpreter_results(rec, analysis, tensors, init, seed: int = 0, gradients: bool = True):
    return _results(rec, analysis, "interpreter", tensors, init, seed, gradients=gradients)


def device_for(backend: str, lowering) -> tuple[torch.device | None, str | None]:
    """Where `backend` runs `lowering` for a check here: the CPU if it takes CPU
    tensors, else a GPU if there is one it takes; else (None, the reason)."""
    chosen = backend_named(backend)
    reason = chosen.supports(lowering)
    if reason is not None:  # not on any device
        return None, reason
    cpu = torch.device("cpu")
    reason = chosen.supports(lowering, cpu)
    if reason is None:
        return cpu, None
    if torch.cuda.is_available() and chosen.supports(lowering, torch.device("cuda")) is None:
        return torch.device("cuda"), None
    return None, reason
