"""One step at a time: the decoding path (`CompiledRecurrence.step`).

Stage: backend (torch). Token-by-token generation calls a recurrence with one
step's inputs and the state it carries. The full-sequence machinery (a scan,
chunks, a solver) is overhead at T = 1; what a step needs is the sequential
form's printed step (`sequential.py`: any spec has one, whatever its class),
the state-free work hoisted for that one step, and the checks.

The checks of a call (`recc.signature.bind`: names, shapes, dtypes, devices)
depend only on the tensors' metadata, which a decoding loop repeats every
token: they run on the first step with a given metadata and are cached. Each
step still checks values: one sum over all its tensors, synchronised once
(finite: no NaN and no inf); anything else runs the full checks, for their
message.
"""

from __future__ import annotations

import weakref
from dataclasses import replace
from typing import Any

import torch

from recc.backends.torch.sequential import SequentialLoop
from recc.lowering import sequential_plan
from recc.signature import Bound, bind


class Stepper:
    """A spec's one-step function."""

    def __init__(self, plan) -> None:
        self.spec = plan.spec
        self.finite_states = plan.finite_states
        self.loop = SequentialLoop(plan.sequential or sequential_plan(plan.spec))
        self._bound: dict[tuple, Bound] = {}  # metadata -> a call bound with it
        self._params = {p.name for p in self.spec.params}
        # a param found finite: (a weak reference to it, its version then)
        self._clean_params: dict[str, tuple] = {}
        # the states the last step returned, likewise: passed back in, they are the
        # recurrence's own values, which a full call does not check either
        self._returned: dict[str, tuple] = {}

    def _clean(self, tensors: dict, state: dict, check_nan: bool) -> bool:
        """Whether a step's values pass the checks without looking closer: the sum of
        every tensor's sum is finite (so none holds NaN or inf), one synchronisation.
        A param found finite is not summed again while it is the same tensor,
        unmodified (its version counts in-place updates): decoding passes the same
        weights every token; nor is a state this stepper returned, passed back."""
        checked = []
        fresh = {}
        for name, value in tensors.items() if check_nan else ():
            if name in self._params:
                kept = self._clean_params.get(name)
                if kept is not None and kept[0]() is value and kept[1] == value._version:
                    continue
                fresh[name] = (weakref.ref(value), value._version)
            checked.append(value)
        for name, value in state.items():
            if not (check_nan or name in self.finite_states):
                continue
            kept = self._returned.get(name)
            if kept is not None and kept[0]() is value and kept[1] == value._version:
                continue  # the state this stepper returned: the recurrence's own values
            checked.append(value)
        sums = [v.sum() for v in checked if v.numel()]
        if sums:
            total = sums[0]
            for more in sums[1:]:  # a large finite sum that overflows: the full checks
                total = total + more
            if not bool(torch.isfinite(total)):
                return False
        self._clean_params.update(fresh)
        return True

    def __call__(self, tensors: dict[str, Any], state: dict[str, Any], check_nan: bool):
        """(outputs `[B, (H), ...]`, new states) of one step."""
        inputs = {i.name for i in self.spec.inputs}
        sequence = {
            k: v.unsqueeze(1) if k in inputs and _tensor(v) else v for k, v in tensors.items()
        }
        key = _metadata(sequence, state, check_nan)
        template = self._bound.get(key) if key is not None else None
        if template is None or not self._clean(sequence, state, check_nan):
            bound = bind(self.spec, sequence, state or None, check_nan, self.finite_states)
            if key is not None:
                self._bound[key] = bound
        else:
            cast = template.compute_dtype

            def as_computed(v: torch.Tensor) -> torch.Tensor:
                return v if v.dtype == cast else v.to(cast)

            bound = replace(
                template,
                inputs={k: as_computed(sequence[k]) for k in template.inputs},
                params={
                    k: as_computed(sequence[k]) if k in sequence else v
                    for k, v in template.params.items()
                },
                initial_state={
                    k: as_computed(state[k]) if k in state else v
                    for k, v in template.initial_state.items()
                },
            )
        if bound.T == 0:  # pragma: no cover - a step has one time step by construction
            raise AssertionError("a step without a step")
        outputs, states = self.loop.one_step(bound)
        lead = (bound.B, *bound.batch_heads)
        finals = tuple(
            _full(v, (*lead, *bound.shape_of(s.dims))) for s, v in zip(self.spec.states, states)
        )
        self._returned = {
            s.name: (weakref.ref(v), v._version) for s, v in zip(self.spec.states, finals)
        }
        return (
            tuple(
                _cast(_full(v, (*lead, *bound.shape_of(o.expr.dims))), bound.out_dtype)
                for o, v in zip(self.spec.outputs, outputs)
            ),
            tuple(
                _full(v, (*lead, *bound.shape_of(s.dims))) for s, v in zip(self.spec.states, states)
            ),
        )


def _cast(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return value if value.dtype == dtype else value.to(dtype)


def _full(value: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return value if tuple(value.shape) == shape else value.expand(shape)


def _tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _metadata(tensors: dict, state: dict, check_nan: bool) -> tuple | None:
    """What the checks of a call depend on; None if some argument is not a tensor
    (the full checks then say what is wrong)."""
    key: list = [check_nan]
    for kind, values in (("tensor", tensors), ("state", state)):
        for name, value in values.items():
            if not _tensor(value):
                return None
            key.append((kind, name, tuple(value.shape), value.dtype, value.device))
    return tuple(key)


__all__ = ["Stepper"]
