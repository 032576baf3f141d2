"""The chunked scan under `torch.compile`: one fused program per input shape.

Stage: backend (torch). `run_scan` issues a few hundred small tensor ops per
call; under inductor the gates, both passes and the carry fuse into a handful
of generated C++ (CPU) or Triton (GPU) loops. The price is a compile on the
first call for every new input shape, dtype or device (tens of seconds on a
CPU; after 8 shapes of one recurrence torch's recompile limit runs further
shapes eagerly, with a warning), so this is opt-in:
`recc.compile(spec, backend="torch", torch_compile=True)`.

Autograd works as for any compiled torch function: the backward is compiled
too, on the first backward call.
"""

from __future__ import annotations

import dataclasses
import types

import torch
from torch._dynamo.exc import TorchDynamoException
from torch._inductor.exc import InductorError

from recc.backends.torch.scan import run_scan
from recc.errors import RecError
from recc.lowering import ScanPlan
from recc.signature import Bound

# Inductor's default caps one fused kernel at 64 nodes; the unrolled chunk loop
# is a chain of ~3 nodes per step, which must stay one kernel to stay in cache.
INDUCTOR_OPTIONS = {"max_fusion_size": 4096}


class CompiledScan:
    """`run_scan` for one spec, compiled once per input shape."""

    def __init__(self, plan: ScanPlan) -> None:
        self.rec = rec = plan.spec

        def scan(bound: Bound):
            return run_scan(plan, bound)

        self._compiled = torch.compile(
            _own_code(scan, f"recc_scan_{rec.name}"), dynamic=False, options=INDUCTOR_OPTIONS
        )

    def __call__(self, bound: Bound):
        # A fresh Bound per call: dynamo guards on its tensors, not on its identity.
        try:
            return self._compiled(dataclasses.replace(bound))
        except (TorchDynamoException, InductorError) as err:
            # No C++ compiler, an unsupported device, ...: torch's own failure,
            # not the spec's; say so and how to go on without it.
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RecError(
                f"torch.compile failed for '{self.rec.name}': {first}",
                hint="call recc.compile(..., torch_compile=False) to run the same scan eagerly "
                "(torch.compile on a CPU needs a working C++ compiler)",
            ) from err


def _own_code(fn: types.FunctionType, name: str) -> types.FunctionType:
    """`fn` with a code object of its own.

    Dynamo keeps its compiled graphs, and counts recompiles against its limit
    (8), per code object. Every CompiledScan would otherwise share one: the
    ninth spec or shape compiled in a process would silently run eagerly.
    """
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
