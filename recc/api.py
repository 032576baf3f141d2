"""`recc.compile`: a spec in, a callable recurrence out.

Stage: top level. Parses and analyses once; each call binds and checks its
tensors (`recc.signature`) and runs the chosen executor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recc import interpreter
from recc.analysis import Analysis, analyze
from recc.errors import RecError
from recc.ir import Recurrence, load
from recc.lowering import LoweringPlan, plan
from recc.lowering.plan import IMPLEMENTED_BACKENDS
from recc.report import explain
from recc.signature import bind

BACKENDS = ("auto", *IMPLEMENTED_BACKENDS)


class CompiledRecurrence:
    """A compiled spec. Call it with the spec's inputs and params by name:

        y = fn(k=k, v=v)                                   # one output
        y, final = fn(k=k, v=v, output_final_state=True)  # and the last state
        y = fn(k=k, v=v, initial_state=h0)                 # start from h0

    Inputs are `[B, T, *dims]` or `[B, T, H, *dims]`; params their declared
    shape (or `[H, *shape]`); states `[B, (H), *dims]`. Several outputs come
    back as a tuple in declaration order, several states likewise.
    """

    def __init__(self, spec: Recurrence, backend: str) -> None:
        self.spec = spec
        self.backend = backend
        self.analysis: Analysis = analyze(spec)
        self.plan: LoweringPlan = plan(spec, self.analysis)

    def __call__(
        self,
        *args: Any,
        initial_state: Any = None,
        output_final_state: bool = False,
        **tensors: Any,
    ) -> Any:
        if args:
            example = ", ".join(f"{i.name}=..." for i in self.spec.inputs)
            raise RecError(f"pass tensors by name, e.g. fn({example})")
        bound = bind(self.spec, tensors, initial_state)
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
    """Compile a `.rec` file (path) or spec text. `backend`: "auto" or "interpreter".

    "auto" picks the fastest implemented executor for the spec and the
    tensors' device; today that is the interpreter for every class.
    """
    if backend not in BACKENDS:
        raise RecError(f"unknown backend '{backend}'", hint=f"choose one of: {', '.join(BACKENDS)}")
    spec = load(path_or_source)
    chosen = "interpreter" if backend == "auto" else backend
    return CompiledRecurrence(spec, chosen)


__all__ = ["CompiledRecurrence", "compile"]
