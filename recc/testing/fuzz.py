"""A fuzz campaign: spec texts generated and mutated; every accepted one runs on `auto`
against the interpreter, values and gradients.

Stage: test support (imports hypothesis, a test extra: see recc.testing.strategies).
The command line is benchmarks/fuzz.py; tests/test_fuzz.py runs a slice of
`campaign` in the slow tier. Nothing in recc's runtime imports this module.

Texts come from the hypothesis strategies of recc.testing.strategies, drawn with
a fixed seed per worker:
  generated   a random spec of each class (diagonal, DPLR, MinMax, nonlinear),
              names drawn from Python keywords and the generated code's spellings
  mutated     a generated spec with tokens deleted, repeated, swapped or replaced
  zoo         a bundled spec with an identifier renamed everywhere (to `lambda`,
              `tl`, `h_carry`, ...), a number set to an edge value (`inf`, `1e309`,
              `1e-320`, `0`), or tokens mutated
  expression  lets, updates and outputs built from every operator and shape
  soup        keywords, names, numbers and brackets in random order

Each text is loaded and analysed. A RecError is a rejection (fine: it is
the user's mistake, located). Anything else raised is an internal error.
An accepted spec is called through `recc.compile`'s entry point (backend
"auto": the torch scan for diagonal and MinMax specs on this CPU, the
interpreter for the others) in one input regime of recc.testing.regimes and
a length of 1, 13 or 37 steps, and compared with the interpreter by
recc.testing.agree (NaN/inf positions, values, final states and the gradient
of every input, param and initial state). Any difference is a mismatch.

`report` counts each outcome over distinct texts.
"""

from __future__ import annotations

import hashlib
import signal
import traceback
from collections import Counter
from dataclasses import dataclass, field

import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from recc.analysis import analyze
from recc.errors import RecError
from recc.ir import load
from recc.testing.agree import disagreements
from recc.testing.regimes import LENGTHS, regimes_for
from recc.testing.strategies import (
    expression_spec,
    mutated_spec,
    spec_of,
    token_soup,
    zoo_mutant,
)

SOURCES = {
    "generated": spec_of().map(lambda pair: pair[0]),
    "mutated": mutated_spec(),
    "zoo": zoo_mutant(),
    "expression": expression_spec(),
    "soup": token_soup(),
}
WEIGHTS = {"generated": 3, "mutated": 2, "zoo": 3, "expression": 1, "soup": 1}
BAD = ("internal error", "mismatch", "timeout")


@dataclass
class Tally:
    """Outcomes by source, and the bad cases in full."""

    counts: Counter = field(default_factory=Counter)  # (source, outcome) -> n
    backends: Counter = field(default_factory=Counter)  # executor auto ran -> n
    regimes: Counter = field(default_factory=Counter)
    texts: set = field(default_factory=set)  # distinct texts (sha1)
    bad: list = field(default_factory=list)  # (outcome, source, text, detail)

    def merge(self, other: Tally) -> None:
        self.counts.update(other.counts)
        self.backends.update(other.backends)
        self.regimes.update(other.regimes)
        self.texts |= other.texts
        self.bad += other.bad


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def run_case(text: str, choice: int, timeout: float) -> tuple[str, str, str, str]:
    """(outcome, detail, executor, regime) for one text."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    executor = regime_name = ""
    try:
        try:
            rec = load(text)
            analysis = analyze(rec)
        except RecError:
            return "rejected", "", "", ""
        from recc.api import CompiledRecurrence

        executor = CompiledRecurrence(rec, "auto").backend_for(torch.device("cpu"))
        regimes = regimes_for(analysis.kind)
        regime = regimes[choice % len(regimes)]
        regime_name = regime.name
        T = LENGTHS[(choice // len(regimes)) % len(LENGTHS)]
        tensors, init = regime.call(rec, T, seed=choice)
        found = disagreements(
            rec, analysis, "auto", tensors, init, choice, until_overflow=regime.overflows
        )
        if found:
            detail = f"[{regime.name}, T={T}] " + "; ".join(map(str, found[:3]))
            return "mismatch", detail, executor, regime_name
        return "agrees", "", executor, regime_name
    except _Timeout:
        return "timeout", f"over {timeout:g} s", executor, regime_name
    except RecError as err:  # raised by a call on valid inputs: recc refused its own spec
        return "internal error", f"RecError at call time: {err}", executor, regime_name
    except Exception:  # noqa: BLE001 - the point of the campaign
        return "internal error", traceback.format_exc(limit=-6), executor, regime_name
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


class _Enough(Exception):
    """Ends the hypothesis loop once `n` distinct texts have run."""


def campaign(n: int, worker_seed: int = 0, timeout: float = 60.0) -> Tally:
    """Draw and run `n` distinct texts (hypothesis, seeded): the outcomes. A text
    drawn again is not run again."""
    torch.set_num_threads(1)
    tally = Tally()
    names = [name for name, w in WEIGHTS.items() for _ in range(w)]

    @seed(worker_seed)
    @settings(
        max_examples=20 * n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def one(data):
        source = data.draw(st.sampled_from(names), label="source")
        text = data.draw(SOURCES[source], label="text")
        choice = data.draw(st.integers(0, 2**20), label="choice")
        if len(tally.texts) >= n:
            raise _Enough
        key = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
        if key in tally.texts:
            return
        tally.texts.add(key)
        outcome, detail, executor, regime = run_case(text, choice, timeout)
        tally.counts[source, outcome] += 1
        if executor:
            tally.backends[executor] += 1
        if regime:
            tally.regimes[regime] += 1
        if outcome in BAD:
            tally.bad.append((outcome, source, text, detail))

    try:
        one()
    except _Enough:
        pass
    return tally


def campaign_share(args: tuple[int, int, float]) -> Tally:
    """`campaign(n, worker_seed, timeout)` with its arguments as one tuple: a worker
    process's share of a campaign (`ProcessPoolExecutor.map` passes one argument)."""
    return campaign(*args)


def report(tally: Tally, seconds: float) -> str:
    outcomes = ["rejected", "agrees", *BAD]
    lines = [f"{'source':<12}" + "".join(f"{o:>16}" for o in outcomes) + f"{'total':>10}"]
    for source in WEIGHTS:
        row = [tally.counts[source, o] for o in outcomes]
        lines.append(f"{source:<12}" + "".join(f"{v:>16}" for v in row) + f"{sum(row):>10}")
    total = [sum(tally.counts[s, o] for s in WEIGHTS) for o in outcomes]
    lines.append(f"{'all':<12}" + "".join(f"{v:>16}" for v in total) + f"{sum(total):>10}")
    lines.append(
        f"texts run: {sum(total)} ({len(tally.texts)} distinct across workers); "
        f"accepted: {sum(total[1:])}"
    )
    lines.append("executor auto ran: " + ", ".join(f"{k} {v}" for k, v in tally.backends.items()))
    lines.append("regimes: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.regimes.items())))
    lines.append(f"wall time: {seconds:.0f} s")
    return "\n".join(lines)
