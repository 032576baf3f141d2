"""Input regimes that find the answers a continuous random draw misses.

Stage: top level (used by `recc check`, the tests and the fuzz campaign;
reads the analysis, runs nothing). Random normal inputs almost never tie,
cancel exactly, saturate a gate to exactly 0 or 1, or start a state at
infinity, which is where rewritten forms and reassociated scans differ from
the spec as written. Each `Regime` draws a whole call (fp64 tensors for every
input and param, initial states) for a sequence length; `regimes_for(kind)`
lists the ones a class admits (an infinite start only where the class gives
it a meaning: MinMax).

    normal       N(0, 0.5)
    declared     N(0, 0.5), the spec's own initial values (no initial_state passed)
    positive     U(0.05, 0.95)           (log / sqrt of inputs stay real)
    integers     integers in [-3, 3]     (ties and exact cancellations)
    zeros        every value 0
    saturating   0, +-3, +-40, +-800 and N(0, 1) mixed: gates of exactly 0 and 1
    huge         N(0, 1) * 1e6
    tiny         N(0, 1) * 1e-6
    inf start    initial states +-inf, inputs N(0, 0.5)   (MinMax only)

Every regime runs at T = 1 and at lengths that are multiples of no chunk or
block size (`LENGTHS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from recc.ir.nodes import Recurrence

LENGTHS = (1, 13, 37)  # T = 1, and primes: never a multiple of a chunk or block size

Draw = Callable[[torch.Generator, tuple[int, ...]], torch.Tensor]


def _normal(scale: float) -> Draw:
    return lambda g, shape: torch.randn(shape, generator=g, dtype=torch.float64) * scale


def _uniform(low: float, high: float) -> Draw:
    return lambda g, shape: torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low


def _integers(g: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randint(-3, 4, shape, generator=g).to(torch.float64)


def _zeros(g: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float64)


_SATURATING = torch.tensor([0.0, 3.0, -3.0, 40.0, -40.0, 800.0, -800.0], dtype=torch.float64)


def _saturating(g: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    pick = torch.randint(0, len(_SATURATING) + 2, shape, generator=g)
    normal = torch.randn(shape, generator=g, dtype=torch.float64)
    values = _SATURATING[pick.clamp(max=len(_SATURATING) - 1)]
    return torch.where(pick >= len(_SATURATING), normal, values)


def _infinite(g: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    signs = torch.randint(0, 2, shape, generator=g).to(torch.float64) * 2 - 1
    return signs * float("inf")


@dataclass(frozen=True)
class Regime:
    """A way to draw a whole call.

    `overflows`: values this large may overflow to +-inf inside the
    recurrence (exp(800), a state growing 1e12-fold per step); once a state is
    infinite, a scan's products and sums, taken in another order than the
    loop's, give NaN where the loop gives +-inf (inf - inf, 0 * inf), and near
    the overflow threshold one order is finite where another is not. Such a
    regime is compared up to the step where the interpreter's results stop
    being finite (`recc.testing.agree.disagreements`, `until_overflow`).
    `declared_start`: no initial state is passed; the spec's own initial
    values (`state h = -inf`) are used."""

    name: str
    values: Draw  # inputs and params
    states: Draw  # initial states
    overflows: bool = False
    declared_start: bool = False

    def call(
        self, rec: Recurrence, T: int, seed: int = 0, B: int = 2, heads: int | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(tensors by name, initial states by name) for one call, fp64."""
        g = torch.Generator().manual_seed(seed)
        sizes = {d: 2 + i % 3 for i, d in enumerate(rec.dims)}
        lead = (B, T) + ((heads,) if heads else ())
        tensors = {i.name: self.values(g, (*lead, *(sizes[d] for d in i.dims))) for i in rec.inputs}
        tensors.update(
            {p.name: self.values(g, tuple(sizes[d] for d in p.dims)) for p in rec.params}
        )
        if self.declared_start:
            return tensors, {}
        batch = (B,) + ((heads,) if heads else ())
        init = {s.name: self.states(g, (*batch, *(sizes[d] for d in s.dims))) for s in rec.states}
        return tensors, init


NORMAL = Regime("normal", _normal(0.5), _normal(0.5))
DECLARED = Regime("declared start", _normal(0.5), _normal(0.5), declared_start=True)
POSITIVE = Regime("positive", _uniform(0.05, 0.95), _uniform(0.05, 0.95))
INTEGERS = Regime("integers", _integers, _integers)
ZEROS = Regime("zeros", _zeros, _zeros)
SATURATING = Regime("saturating", _saturating, _normal(1.0), overflows=True)
HUGE = Regime("huge", _normal(1e6), _normal(1e6), overflows=True)
TINY = Regime("tiny", _normal(1e-6), _normal(1e-6))
INFINITE_START = Regime("inf start", _normal(0.5), _infinite)

REGIMES = (
    NORMAL,
    DECLARED,
    POSITIVE,
    INTEGERS,
    ZEROS,
    SATURATING,
    HUGE,
    TINY,
    INFINITE_START,
)


def regimes_for(kind: str) -> tuple[Regime, ...]:
    """The regimes a class admits: an infinite start only for MinMax recurrences."""
    return tuple(r for r in REGIMES if r is not INFINITE_START or kind == "minmax")
