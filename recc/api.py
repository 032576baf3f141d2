"""`recc.compile`: a spec in, a callable recurrence out.

Stage: top level. Parses and analyses once; each call binds and checks its
tensors (`recc.signature`) and runs the chosen executor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recc import interpreter
from recc.analysis import Analysis, analyze
from recc.backends.torch import run_scan
from recc.errors import RecError
from recc.ir import Recurrence, load
from recc.lowering import LoweringPlan, plan
from recc.lowering.plan import ALL_BACKENDS, TORCH
from recc.report import explain
from recc.signature import bind

BACKENDS = ("auto", *ALL_BACKENDS)


class CompiledRecurrence:
    """A compiled spec. Call it with the spec's inputs and params by name:

        y = fn(k=k, v=v)                                   # one output
        y, final = fn(k=k, v=v, output_final_state=True)  # and the last state
        y = fn(k=k, v=v, initial_state=h0)                 # start from h0

    Inputs are `[B, T, *dims]` or `[B, T, H, *dims]`; params their declared
    shape (or `[H, *shape]`); states `[B, (H), *dims]`. Several outputs come
    back as a tuple in declaration order, several states likewise.

    NaN in any tensor is a RecError unless `check_nan=False` (then it
    propagates like in any torch op); inf is allowed (MinMax starts at -inf).
    """

    def __init__(self, spec: Recurrence, backend: str) -> None:
        self.spec = spec
        self.analysis: Analysis = analyze(spec)
        self.plan: LoweringPlan = plan(spec, self.analysis)
        if backend == "auto":
            backend = self.plan.backends[0]
        elif backend not in self.plan.backends:
            raise RecError(
                f"backend '{backend}' has no lowering for '{spec.name}' "
                f"({self.analysis.kind} class) yet",
                hint=f"use backend='auto' or one of: {', '.join(self.plan.backends)}",
            )
        self.backend = backend

    def __call__(
        self,
        *args: Any,
        initial_state: Any = None,
        output_final_state: bool = False,
        check_nan: bool = True,
        **tensors: Any,
    ) -> Any:
        if args:
            example = ", ".join(f"{i.name}=..." for i in self.spec.inputs)
            raise RecError(f"pass tensors by name, e.g. fn({example})")
        bound = bind(self.spec, tensors, initial_state, check_nan)
        if self.backend == TORCH:
            outputs, finals = run_scan(self.spec, self.analysis, bound)
        else:
            outputs, finals = interpreter.run(self.spec, bound)
        out = tuple(outputs[o.name] for o in self.spec.outputs)
        result: Any = out[0] if len(out) == 1 else out
        if not output_final_state:
            return result
        states = tuple(finals[s.name] for s in self.spec.states)
        return result, (states[0] if len(states) == 1 else states)

    def explain(self) -> str:
        return explain(self.spec, self.analysis, self.plan)

    def __repr__(self) -> str:
        return f"<recc {self.spec.name}: {self.analysis.kind}, backend={self.backend}>"


def compile(path_or_source: str | Path, backend: str = "auto") -> CompiledRecurrence:  # noqa: A001
    """Compile a `.rec` file (path) or spec text.

    `backend`: "auto" (the fastest implemented executor for the spec's class:
    "torch" for diagonal and MinMax specs, else "interpreter"), "torch" (the
    chunked-scan lowering, any device) or "interpreter" (the reference).
    """
    if backend not in BACKENDS:
        raise RecError(f"unknown backend '{backend}'", hint=f"choose one of: {', '.join(BACKENDS)}")
    return CompiledRecurrence(load(path_or_source), backend)


__all__ = ["CompiledRecurrence", "compile"]
