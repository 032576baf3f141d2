"""The chunked scan under `torch.compile`: one fused program per input shape.

Stage: backend (torch). `run_scan` issues a few hundred small tensor ops per
call; under inductor the gates, both passes and the carry fuse into a handful
of generated C++ (CPU) or Triton (GPU) loops. The price is a compile on the
first call for every new input shape, dtype or device (tens of seconds on a
CPU; torch's recompile limit then falls back to eager), so this is opt-in:
`recc.compile(spec, backend="torch", torch_compile=True)`.

Autograd works as for any compiled torch function: the backward is compiled
too, on the first backward call.
"""

from __future__ import annotations

import dataclasses

import torch

from recc.analysis.forms import Analysis
from recc.backends.torch.scan import run_scan
from recc.ir.nodes import Recurrence
from recc.signature import Bound

# Inductor's default caps one fused kernel at 64 nodes; the unrolled chunk loop
# is a chain of ~3 nodes per step, which must stay one kernel to stay in cache.
INDUCTOR_OPTIONS = {"max_fusion_size": 4096}


class CompiledScan:
    """`run_scan` for one spec, compiled once per input shape."""

    def __init__(self, rec: Recurrence, analysis: Analysis) -> None:
        self.rec, self.analysis = rec, analysis
        self._compiled = torch.compile(self._scan, dynamic=False, options=INDUCTOR_OPTIONS)

    def _scan(self, bound: Bound):
        return run_scan(self.rec, self.analysis, bound)

    def __call__(self, bound: Bound):
        # A fresh Bound per call: dynamo guards on its tensors, not on its identity.
        return self._compiled(dataclasses.replace(bound))
