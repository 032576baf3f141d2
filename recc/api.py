"""`recc.compile`: a spec in, a callable recurrence out.

Stage: top level. Parses and analyses once; each call binds and checks its
tensors (`recc.signature`) and runs the chosen executor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from recc import custom_op
from recc.analysis import Analysis, analyze
from recc.backends.protocol import Call, Executor, Options
from recc.backends.registry import NAMES, REGISTRY, backend_named, first_accepting
from recc.backends.sequences import per_sequence
from recc.errors import RecError
from recc.ir import Recurrence, load
from recc.lowering import AUTO, CHUNKWISE, NEWTON, SCAN, STRATEGIES, LoweringPlan, plan
from recc.report import explain
from recc.signature import bind, initial_states

BACKENDS = ("auto", *NAMES)


class CompiledRecurrence:
    """A compiled spec. Call it with the spec's inputs and params by name:

        y = fn(k=k, v=v)                                   # one output
        y, final = fn(k=k, v=v, output_final_state=True)  # and the last state
        y = fn(k=k, v=v, initial_state=h0)                 # start from h0
        y = fn(k=k, v=v, cu_seqlens=offsets)               # packed sequences

    Inputs are `[B, T, *dims]` or `[B, T, H, *dims]`; params their declared
    shape (or `[H, *shape]`); states `[B, (H), *dims]`. Several outputs come
    back as a tuple in declaration order, several states likewise.

    `cu_seqlens` (flash-linear-attention's convention): N sequences packed along
    time in one batch row, inputs `[1, T, ...]`, sequence i at steps
    `cu_seqlens[i]:cu_seqlens[i+1]` (an integer tensor or list `[0, ..., T]`); the
    initial and final states are then `[N, (H), *dims]`, one row per sequence, and
    each sequence starts from its own row, exactly as N separate calls would.

    NaN in any tensor is a RecError unless `check_nan=False` (then it
    propagates like in any torch op); inf is allowed (MinMax starts at -inf).
    """

    def __init__(
        self, spec: Recurrence, backend: str, torch_compile: bool = False, strategy: str = AUTO
    ) -> None:
        self.spec = spec
        self.analysis: Analysis = analyze(spec)
        self.plan: LoweringPlan = plan(spec, self.analysis, strategy)
        check_strategy(spec, self.plan, strategy)
        self.backend = backend
        self.options = Options(torch_compile=torch_compile)
        self._executors: dict[str, Executor] = {}  # prepared on first use
        self._last: Executor | None = None  # what ran the latest call
        self._key = custom_op.register(self)  # how the recc::call op finds this function
        self._stepper: Any = None  # `step`'s function, made on first use
        if backend != "auto":
            reason = backend_named(backend).supports(self.plan)
            if reason is not None:
                raise RecError(
                    f"backend '{backend}' cannot run '{spec.name}': {reason}",
                    hint=f"use backend='auto' or one of: {', '.join(self.accepted())}",
                )
        if torch_compile and backend not in ("auto", "torch"):
            raise RecError(
                f"torch_compile=True needs the torch backend; backend='{backend}' was asked for",
                hint="use backend='torch' (or 'auto'), or leave torch_compile off",
            )
        if torch_compile:
            reason = backend_named("torch").supports(self.plan)
            if reason is not None:
                raise RecError(
                    f"torch_compile=True needs the torch backend, which cannot run "
                    f"'{spec.name}': {reason}",
                    hint="leave torch_compile off for this spec",
                )
            self._executor("torch")  # compiled on first call; set up now

    def accepted(self) -> list[str]:
        """The backends that run this spec (on some device)."""
        return [b.name for b in REGISTRY if b.supports(self.plan) is None]

    def backend_for(self, device: torch.device) -> str:
        """The executor a call on `device`'s tensors runs on."""
        if self.backend != "auto":
            return self.backend
        return first_accepting(self.plan, device).name

    def _executor(self, name: str) -> Executor:
        if name not in self._executors:
            self._executors[name] = backend_named(name).prepare(self.plan, self.options)
        return self._executors[name]

    def __call__(
        self,
        *args: Any,
        initial_state: Any = None,
        output_final_state: bool = False,
        check_nan: bool = True,
        cu_seqlens: Any = None,
        **tensors: Any,
    ) -> Any:
        if args:
            example = ", ".join(f"{i.name}=..." for i in self.spec.inputs)
            raise RecError(f"pass tensors by name, e.g. fn({example})")
        for flag, value in (("output_final_state", output_final_state), ("check_nan", check_nan)):
            if not isinstance(value, bool):
                raise RecError(
                    f"{flag} must be True or False, got {value!r}",
                    hint=f"pass {flag}=True or {flag}=False",
                )
        starts = initial_states(self.spec, initial_state)
        given = [*tensors.values(), *starts.values()]
        if custom_op.traced(given):
            outputs, finals = self._traced(tensors, starts, check_nan, cu_seqlens)
        elif any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in given):
            self._backend(torch.device("meta"))  # a named backend may decline the device
            results = custom_op.empty_results(self, tensors, starts, cu_seqlens)  # shapes only
            n = len(self.spec.outputs)
            outputs, finals = tuple(results[:n]), tuple(results[n:])
        else:
            outputs, finals = self._run(tensors, starts, check_nan, cu_seqlens)
        result: Any = outputs[0] if len(outputs) == 1 else outputs
        if not output_final_state:
            return result
        return result, (finals[0] if len(finals) == 1 else finals)

    def _bind(self, tensors: dict, starts: dict, check_nan: bool, cu_seqlens: Any, values=True):
        """The call's arguments checked and bound (`recc.signature.bind`); `values=False`
        checks shapes, dtypes and devices only (a traced call's tensors have no values
        to read: the op checks them when it runs)."""
        finite = self.plan.finite_states if values else frozenset()
        return bind(self.spec, tensors, starts or None, check_nan and values, finite, cu_seqlens)

    def _backend(self, device: torch.device) -> str:
        """The backend that runs tensors on `device`, or a RecError if the one the user
        named cannot (`auto` always finds one)."""
        name = self.backend_for(device)
        reason = backend_named(name).supports(self.plan, device)
        if reason is not None:  # only a backend named by the user declines here
            others = [b for b in self.accepted() if b != name]
            raise RecError(
                f"backend '{name}' cannot run these tensors: {reason}",
                hint=f"move the tensors, or use backend='auto' or one of: {', '.join(others)}",
            )
        return name

    def _run(
        self, tensors: dict, starts: dict, check_nan: bool, cu_seqlens: Any
    ) -> tuple[tuple, tuple]:
        """One eager call: (outputs, final states) in declaration order."""
        bound = self._bind(tensors, starts, check_nan, cu_seqlens)
        name = self._backend(bound.device)
        call = Call(bound, tensors, starts)
        executor = self._last = self._executor(name)
        if bound.cu_seqlens is not None and not backend_named(name).takes_packed(self.plan):
            outputs, finals = per_sequence(executor, call)
        else:
            outputs, finals = executor(call)
        return (
            tuple(outputs[o.name] for o in self.spec.outputs),
            tuple(finals[s.name] for s in self.spec.states),
        )

    def _traced(
        self, tensors: dict, starts: dict, check_nan: bool, cu_seqlens: Any
    ) -> tuple[tuple, tuple]:
        """A call torch.compile traces or a functorch transform runs: one `recc::call`
        op (`recc.custom_op`), its arguments' shapes checked now (by the op's fake
        implementation while torch.compile traces: dynamo cannot build a RecError, so
        it arrives wrapped in dynamo's error), its values when it runs."""
        if not torch.compiler.is_compiling():
            self._bind(tensors, starts, check_nan, cu_seqlens, values=False)
        if cu_seqlens is not None and not isinstance(cu_seqlens, torch.Tensor):
            cu_seqlens = torch.tensor(list(cu_seqlens), dtype=torch.int64)
        names = list(tensors)
        state_names = list(starts)
        results = custom_op.call(
            self._key,
            ",".join(names),
            [tensors[n] for n in names],
            ",".join(state_names),
            [starts[n] for n in state_names],
            check_nan,
            cu_seqlens,
        )
        n = len(self.spec.outputs)
        return tuple(results[:n]), tuple(results[n:])

    def step(self, state: Any = None, *, check_nan: bool = True, **tensors: Any) -> tuple:
        """One step, for decoding token by token: this step's inputs `[B, (H), *dims]`
        (no time axis), the params as in a call, and the state before the step
        (`state`, as a call's `initial_state`; None: the spec's declared start).

            y, h = fn.step(h, k=k_t, v=v_t)

        Returns (outputs, new state) as `fn(..., output_final_state=True)` does, each
        output without its time axis: stepping a sequence gives what one call over it
        gives. Runs the step of the sequential form on any device (the torch backend,
        `recc/backends/torch/decode.py`), whatever `backend=` says."""
        if not isinstance(check_nan, bool):
            raise RecError(
                f"check_nan must be True or False, got {check_nan!r}",
                hint="pass check_nan=True or check_nan=False",
            )
        if self._stepper is None:
            self._stepper = backend_named("torch").stepper(self.plan)
        starts = initial_states(self.spec, state)
        outputs, finals = self._stepper(tensors, starts, check_nan)
        result: Any = outputs[0] if len(outputs) == 1 else outputs
        return result, (finals[0] if len(finals) == 1 else finals)

    def explain(self) -> str:
        return explain(self.plan)

    @property
    def last_stats(self) -> Any:
        """How the latest call was solved, where its executor keeps a record (the
        Newton solver's `NewtonStats`: iterations, convergence, a fallback's
        reason); None otherwise."""
        return getattr(self._last, "last_stats", None)

    def __repr__(self) -> str:
        return f"<recc {self.spec.name}: {self.analysis.kind}, backend={self.backend}>"


def check_strategy(spec: Recurrence, lowering: LoweringPlan, strategy: str) -> None:
    """A strategy the spec has no form for is an error, with the reason."""
    if strategy == CHUNKWISE and lowering.chunk is None:
        why = lowering.no_chunk_plan or f"the {lowering.kind} class runs {lowering.algorithm}"
        raise RecError(
            f"strategy='chunkwise' cannot run '{spec.name}': {why}",
            hint="use strategy='auto' (recc explain shows what runs)",
        )
    if strategy == NEWTON and lowering.newton is None:
        why = lowering.no_newton_plan or f"the {lowering.kind} class runs {lowering.algorithm}"
        raise RecError(
            f"strategy='newton' cannot run '{spec.name}': {why}",
            hint="use strategy='auto' (recc explain shows what runs)",
        )
    if strategy == SCAN and lowering.scan is None:
        raise RecError(
            f"strategy='scan' cannot run '{spec.name}': the {lowering.kind} class has "
            f"no scan form (it runs {lowering.algorithm})",
            hint="use strategy='auto' (recc explain shows what runs)",
        )


def compile(  # noqa: A001
    path_or_source: str | Path,
    backend: str = "auto",
    torch_compile: bool = False,
    strategy: str = "auto",
) -> CompiledRecurrence:
    """Compile a `.rec` file (path) or spec text.

    `backend`: "auto" (per call, the first backend of `recc.backends.registry`
    that accepts the spec and the tensors' device: "triton" on CUDA for
    diagonal and MinMax specs, "torch" elsewhere; `recc explain` lists each
    backend's answer), "triton" (generated kernels; CUDA, or CPU under
    TRITON_INTERPRET=1), "torch" (the chunked scan, the chunkwise algorithm or
    the sequential loop; any device) or "interpreter" (the reference).

    `torch_compile=True` runs the torch backend's scan under `torch.compile`
    (inductor): its few hundred small ops fuse into a few loops (on this
    project's 2-core CPU 1.5-1.7x faster forward, ~2x forward+backward; see
    docs/scan-lowering.md), after a compile of seconds to tens of seconds on
    the first call with each new input shape (and again on the first backward).
    For a sequential loop (nonlinear specs) it compiles the loop's step.

    `strategy`: "auto" (the class's algorithm; a matrix state read out linearly,
    GLA, RetNet or Mamba2, has both a scan and a chunkwise form, and the torch
    backend picks by sequence length: `recc explain` prints the rule), "scan" or
    "chunkwise" (that form only; an error if the spec has none), "sequential"
    (the step loop with its state-free work hoisted, which every spec has), or
    "newton" (a nonlinear spec's Newton-parallel solver at every T, on every
    device; `fn.last_stats` then says how each call converged). With "auto" a
    nonlinear spec runs the loop or Newton by a rule per call (device, T,
    gradients) that `recc explain` prints.
    """
    if backend not in BACKENDS:
        raise RecError(f"unknown backend '{backend}'", hint=f"choose one of: {', '.join(BACKENDS)}")
    if not isinstance(torch_compile, bool):
        raise RecError(f"torch_compile must be True or False, got {torch_compile!r}")
    if strategy not in STRATEGIES:
        raise RecError(
            f"unknown strategy {strategy!r}", hint=f"choose one of: {', '.join(STRATEGIES)}"
        )
    return CompiledRecurrence(load(path_or_source), backend, torch_compile, strategy)


__all__ = ["CompiledRecurrence", "compile"]
