"""Property tests (hypothesis): classification, canonical forms, printing, fuzzing.

(a) every generated spec is classified as the class it was generated for;
(b) the canonical form the analysis extracted computes the same step as the
    spec itself (fp64, through the shared IR evaluator);
(c) printing an IR back to text and re-parsing it gives the same IR, for
    generated specs, random expressions of every operator and every bundled
    spec in specs/;
(d) no text whatsoever makes `recc.ir.load` raise anything but RecError.

Each property runs in two tiers: a fast one (profile "recc-fast") in the
default test run, and a `slow`-marked copy with many more examples (profile
"recc-slow", `pytest -m slow`). See recc.testing.strategies for the generators.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

from recc.errors import RecError
from recc.frontend.parser import parse
from recc.interpreter import TorchOps
from recc.ir import Apply, Const, build_ir, load
from recc.ir.evaluate import step
from recc.ir.printer import number_to_source, to_source
from recc.testing.strategies import (
    CLASSES,
    Expected,
    expression_spec,
    mutated_spec,
    printable_text,
    spec_of,
    step_env,
    token_soup,
)
from tests.helpers.profiles import FAST, SLOW

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = sorted((ROOT / "specs").glob("*.rec"))
LANGUAGE_DOC = ROOT / "docs" / "language.md"


@pytest.fixture(scope="module")
def api():
    """(analyze, form_step): the classifier and the canonical-form executor."""
    from recc.analysis import analyze
    from recc.form_step import form_step

    return analyze, form_step


# ---------------------------------------------------------------------------
# (a) classification
# ---------------------------------------------------------------------------


def check_class(analyze, source: str, expected: Expected) -> None:
    note(f"variant: {expected.variant}\n{source}")
    rec = load(source)
    a = analyze(rec)
    note(f"analysis: kind={a.kind} jacobian={a.jacobian} rank={a.rank} semiring={a.semiring!r}")
    note("reasons: " + "; ".join(a.reasons))
    assert a.kind == expected.kind
    assert a.form.kind == a.kind
    assert a.jacobian.kind == expected.jacobian
    if expected.jacobian == "block":
        assert a.jacobian.block_size == expected.block_size
    if expected.kind == "dplr":
        assert a.rank == expected.rank
    if expected.kind == "minmax":
        assert a.semiring == expected.semiring
    if expected.kind in ("diagonal", "dplr"):
        assert a.jacobian.affine


@pytest.mark.parametrize("kind", CLASSES)
def test_classified_as_intended(api, kind):
    @FAST
    @given(spec_of(kind))
    def prop(case):
        check_class(api[0], *case)

    prop()


@pytest.mark.slow
@pytest.mark.parametrize("kind", CLASSES)
def test_classified_as_intended_slow(api, kind):
    @SLOW
    @given(spec_of(kind))
    def prop(case):
        check_class(api[0], *case)

    prop()


# ---------------------------------------------------------------------------
# (b) the canonical form reproduces one interpreter step
# ---------------------------------------------------------------------------


def check_form_step(api, source: str, expected: Expected, data) -> None:
    analyze, form_step = api
    note(f"variant: {expected.variant}\n{source}")
    rec = load(source)
    analysis = analyze(rec)
    env = data.draw(step_env(rec), label="env")
    want, _ = step(rec, TorchOps(torch.float64, torch.device("cpu")), env, outputs=False)
    got = form_step(rec, analysis, dict(env))
    assert set(got) == {s.name for s in rec.states}
    batch = next(iter(env[i.name] for i in rec.inputs)).shape[0]
    for name in (s.name for s in rec.states):
        full = (batch, *env[name].shape[1:])
        g, w = got[name], want[name]
        assert torch.is_tensor(g) and g.dtype == torch.float64, (name, type(g))
        note(f"state {name}")
        torch.testing.assert_close(g.expand(full), w.expand(full), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", CLASSES)
def test_form_step_matches_interpreter(api, kind):
    @FAST
    @given(spec_of(kind), st.data())
    def prop(case, data):
        check_form_step(api, *case, data)

    prop()


@pytest.mark.slow
@pytest.mark.parametrize("kind", CLASSES)
def test_form_step_matches_interpreter_slow(api, kind):
    @SLOW
    @given(spec_of(kind), st.data())
    def prop(case, data):
        check_form_step(api, *case, data)

    prop()


# ---------------------------------------------------------------------------
# (c) print -> parse round trip
# ---------------------------------------------------------------------------


def check_round_trip(source: str) -> None:
    rec = load(source)
    text = to_source(rec)
    again = build_ir(parse(text), text)
    assert again == rec, f"printed as:\n{text}"
    assert to_source(again) == text, "printing is not a fixed point"


@FAST
@given(spec_of())
def test_round_trip_generated(case):
    note(case[0])
    check_round_trip(case[0])


@FAST
@given(expression_spec())
def test_round_trip_expressions(source):
    note(source)
    check_round_trip(source)


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_round_trip_bundled(path):
    check_round_trip(path.read_text())


@pytest.mark.slow
@SLOW
@given(spec_of())
def test_round_trip_generated_slow(case):
    note(case[0])
    check_round_trip(case[0])


@pytest.mark.slow
@SLOW
@given(expression_spec())
def test_round_trip_expressions_slow(source):
    note(source)
    check_round_trip(source)


def test_round_trip_tricky_text():
    source = """
    recurrence inf_net {
      dims D, K, V
      input inf_x[D], dims_y[D], state_z, T[K], v[V]
      param W[D, D]
      state h[D] = -0.0
      state S[K, V] = -inf
      state c = 1e-300
      let w = --inf_x * -1.5 - (dims_y - inf_x) / (2 * -state_z) @ W.T
      update h = (1 - w) * h - -h + max(h, -1) * exp(-softplus(w)) + W.T @ h * 1e20
      update S = S * T + outer(T, v) - (S.T).T + transpose(S.T) - S / (1 - (2 - 3))
      update c = c + sum(S) * dot(w, h) * state_z / -state_z - (c - (c - c)) + 0.1
      output h
      output inf_x
      output o = T @ S
      output S = (S * 2).T.T
    }
    """
    check_round_trip(source)


def test_printer_hand_built_constants():
    """Constants the parser never makes: a negative Const prints as unary minus (same value)."""
    rec = load("recurrence r { dims D input x[D] state h[D] = 0 update h = h * 2 + x output h }")
    update = rec.updates[0]
    mul = update.expr.args[0]
    negative = dataclasses.replace(mul, args=(mul.args[0], Const((), -2.5)))
    expr = dataclasses.replace(update.expr, args=(negative, update.expr.args[1]))
    hand = dataclasses.replace(rec, updates=(dataclasses.replace(update, expr=expr),))
    text = to_source(hand)
    assert "h * -2.5 + x" in text
    again = load(text)
    assert again.updates[0].expr.args[0].args[1] == Apply((), "neg", (Const((), 2.5),))
    for value in (0.1, 1e-300, 5e-324, 1.7976931348623157e308, 123456789.0, 1e16, 2.0**60):
        assert float(number_to_source(value)) == value
    assert number_to_source(math.inf) == "inf" and number_to_source(-math.inf) == "-inf"
    assert number_to_source(-0.0) == "-0.0" and number_to_source(0.0) == "0"
    with pytest.raises(ValueError):
        number_to_source(math.nan)


# ---------------------------------------------------------------------------
# (d) fuzzing: only RecError, ever
# ---------------------------------------------------------------------------


def check_only_rec_error(text: str) -> None:
    try:
        rec = load(text)
    except RecError as err:
        assert str(err)  # renders
        return
    # Whatever loads must also print and re-parse to the same IR.
    check_round_trip(text)
    assert rec is not None


@FAST
@given(printable_text)
def test_fuzz_printable_text(text):
    check_only_rec_error(text)


@FAST
@given(st.text(max_size=100))
def test_fuzz_unicode_text(text):
    check_only_rec_error(text)


@FAST
@given(token_soup())
def test_fuzz_token_soup(text):
    check_only_rec_error(text)


@FAST
@given(mutated_spec())
def test_fuzz_mutated_specs(text):
    check_only_rec_error(text)


@pytest.mark.slow
@SLOW
@given(printable_text | st.text(max_size=200) | token_soup() | mutated_spec())
def test_fuzz_slow(text):
    check_only_rec_error(text)


# ---------------------------------------------------------------------------
# the language reference's examples stay true
# ---------------------------------------------------------------------------


def _doc_examples() -> list[tuple[str, str, str | None]]:
    """(kind, spec text, expected error text or None) for each `rec` / `rec-error` block."""
    if not LANGUAGE_DOC.exists():
        return []
    blocks = re.findall(
        r"^( *)```(rec|rec-error|text)\n(.*?)^ *```", LANGUAGE_DOC.read_text(), re.S | re.M
    )
    examples: list[tuple[str, str, str | None]] = []
    for indent, kind, body in blocks:
        body = "".join(line[len(indent) :] + "\n" for line in body.splitlines())
        if kind == "text":
            if examples and examples[-1][0] == "rec-error" and examples[-1][2] is None:
                examples[-1] = (examples[-1][0], examples[-1][1], body.strip("\n"))
            continue
        examples.append((kind, body, None))
    return examples


DOC_EXAMPLES = _doc_examples()


@pytest.mark.parametrize(
    "kind, source, error",
    DOC_EXAMPLES,
    ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(DOC_EXAMPLES)],
)
def test_language_doc_examples(kind, source, error):
    if kind == "rec":
        check_round_trip(source)  # loads, and prints back
        return
    with pytest.raises(RecError) as info:
        load(source)
    if error is not None:
        assert str(info.value) == error
