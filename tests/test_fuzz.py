"""A slice of the fuzz campaign (recc.testing.fuzz; benchmarks/fuzz.py runs it whole), in
the slow tier.

Generated and mutated spec texts: each is rejected with a RecError or, if
accepted, runs on `auto` exactly as the interpreter does (values, NaN/inf
positions, final states, gradients). No other outcome is allowed: an internal
error, a mismatch or a case past the time limit fails the test with the spec.
"""

from __future__ import annotations

import pytest

from recc.testing.fuzz import campaign


@pytest.mark.slow
def test_a_fuzz_slice_has_no_internal_errors_and_no_mismatches():
    tally = campaign(400, worker_seed=7, timeout=60.0)
    assert sum(tally.counts.values()) == 400
    accepted = sum(n for (_, outcome), n in tally.counts.items() if outcome != "rejected")
    assert accepted > 100, tally.counts  # the slice runs specs, not only rejections
    report = "\n\n".join(f"{o} ({s}): {d}\n{t}" for o, s, t, d in tally.bad[:5])
    assert not tally.bad, report
