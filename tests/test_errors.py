"""Every mistake a user can make is a located `RecError`, never a traceback.

Three parts:

* Golden tests: each `tests/errors/NAME.rec` holds one mistake, and
  `tests/errors/NAME.expected` the full message `str(err)` that loading it must
  give (loaded and analysed, by the relative name `NAME.rec`, so the goldens do not depend on
  where the checkout lives). To add a case, write the `.rec` file and run

      RECC_ACCEPT=1 python -m pytest tests/test_errors.py -k golden

  which (re)writes every `.expected` file from the current messages; read the
  diff before committing it.
* Call-time errors: `recc.signature.bind` rejects bad tensors with a message
  that names the tensor and the shape it expected.
* A fuzz smoke test: mutated good specs either load or raise `RecError`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recc
from recc.analysis import analyze
from recc.errors import RecError
from recc.ir import load
from recc.signature import bind

ERRORS = Path(__file__).parent / "errors"
SPECS = Path(__file__).parent.parent / "specs"
ACCEPT = os.environ.get("RECC_ACCEPT") == "1"
CASES = sorted(p.stem for p in ERRORS.glob("*.rec"))


def _load_error(name: str, monkeypatch: pytest.MonkeyPatch) -> RecError:
    """Load and analyse: some mistakes (a constant log(-1)) show only to sympy."""
    monkeypatch.chdir(ERRORS)
    try:
        analyze(load(f"{name}.rec"))
    except RecError as err:
        return err
    pytest.fail(f"{name}.rec loaded without an error")


# ---- golden messages --------------------------------------------------------


def test_there_are_many_goldens():
    assert len(CASES) >= 24
    stray = sorted({p.stem for p in ERRORS.glob("*.expected")} - set(CASES))
    assert not stray, f"goldens without a spec: {stray}"


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    message = str(_load_error(name, monkeypatch))
    golden = ERRORS / f"{name}.expected"
    if ACCEPT:
        golden.write_text(message + "\n")
    assert golden.exists(), f"no golden for {name}; run with RECC_ACCEPT=1"
    assert message == golden.read_text().rstrip("\n")


@pytest.mark.parametrize("name", CASES)
def test_golden_shape(name: str) -> None:
    """Each message: located head, the source line, a caret line, a hint; no internals."""
    golden = ERRORS / f"{name}.expected"
    if not golden.exists():
        pytest.skip("no golden yet")
    lines = golden.read_text().rstrip("\n").split("\n")
    assert re.fullmatch(rf"{name}\.rec:\d+:\d+: \S.*", lines[0]), lines[0]
    carets = [i for i, line in enumerate(lines) if re.fullmatch(r" {4} *\^~*", line)]
    assert len(carets) == 1, "exactly one caret line"
    assert carets[0] == 2, "the caret line follows the source line"
    assert lines[-1].startswith("    hint: ") and len(lines[-1]) > len("    hint: ") + 10
    text = "\n".join(lines)
    for internal in ("Traceback", ".py", "lark", "recc/", "Token(", "__ANON", "$END"):
        assert internal not in text, f"{internal!r} leaks into the message"
    # The caret points into the quoted source line (or just past its end).
    source_line = (ERRORS / f"{name}.rec").read_text().split("\n")[int(lines[0].split(":")[1]) - 1]
    source_line = re.sub(r"[\x00-\x1f\x7f]", "?", source_line)  # shown as '?'
    assert lines[1] == "    " + source_line
    assert lines[2].index("^") - 4 <= len(source_line)


def test_error_carries_location(monkeypatch: pytest.MonkeyPatch) -> None:
    err = _load_error("unknown_name", monkeypatch)
    assert err.filename == "unknown_name.rec"
    assert err.span is not None and (err.span.line, err.span.column) == (6, 24)
    assert err.hint == "did you mean 'h'?"


def test_source_text_is_named_spec() -> None:
    source = (ERRORS / "no_output.rec").read_text()
    with pytest.raises(RecError) as info:
        load(source)
    assert str(info.value).startswith("<spec>:1:12: recurrence 'ema' has no output")


def test_missing_file() -> None:
    with pytest.raises(RecError, match="no such spec file: nowhere/missing.rec"):
        load("nowhere/missing.rec")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "binary.rec").write_bytes(b"recurrence \xff\xfe {")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecError, match="cannot read spec file binary.rec"):
        load("binary.rec")


def test_empty_and_blank_specs() -> None:
    for source in ("", "   \n\n", "# only a comment\n"):
        with pytest.raises(RecError, match="the spec is empty"):
            load(source)


def test_windows_line_endings_and_tabs() -> None:
    lines = [
        "recurrence r {",
        "\tdims D",
        "\tinput x[D]",
        "\tstate h[D] = 0",
        "\tupdate h = hh",
        "}",
    ]
    source = "\r\n".join(lines)
    with pytest.raises(RecError) as info:
        load(source)
    assert str(info.value).split("\n")[1:3] == ["     update h = hh", "                ^~"]


def test_old_mac_line_endings() -> None:
    # CR-only line endings: a comment used to swallow the rest of the file ("empty").
    good = (SPECS / "mingru.rec").read_text()
    assert load(good.replace("\n", "\r")) == load(good)
    bad = "# a comment\rrecurrence r {\r dims D\r input x[D]\r state h[D] = 0\r"
    with pytest.raises(RecError) as info:
        load(bad + " update h = hh\r output h\r}\r")
    assert str(info.value).startswith("<spec>:6:13: unknown name 'hh'")


def test_numbers_are_ascii_digits() -> None:
    # Python's \\d matches other scripts' digits: (١٠ - z) was read as (10 - z).
    source = (SPECS / "mingru.rec").read_text().replace("(1 - z)", "(\u0661\u0660 - z)")
    with pytest.raises(RecError, match="unexpected character"):
        load(source)


# ---- call-time errors -------------------------------------------------------

CALL_SPEC = """
recurrence s6 {
  dims D, N
  input x[D], B[N], dt[D]
  param A[D, N]
  state h[D, N] = 0
  update h = exp(dt * A) * h + outer(dt * x, B)
  output y = sum(h)
}
"""


@pytest.fixture(scope="module")
def rec():
    return load(CALL_SPEC)


def _good(B: int = 2, T: int = 5, D: int = 3, N: int = 4) -> dict[str, torch.Tensor]:
    return {
        "x": torch.randn(B, T, D),
        "B": torch.randn(B, T, N),
        "dt": torch.rand(B, T, D),
        "A": -torch.rand(D, N),
    }


def _bind_error(rec, tensors, initial_state=None) -> str:
    """The message of the RecError `bind` raises, with runs of spaces squeezed."""
    with pytest.raises(RecError) as info:
        bind(rec, tensors, initial_state)
    message = str(info.value)
    assert "Traceback" not in message and ".py" not in message
    return re.sub(r" +", " ", message)


def test_good_call_binds(rec) -> None:
    bound = bind(rec, _good(), {"h": torch.zeros(2, 3, 4)})
    assert (bound.B, bound.T, bound.sizes) == (2, 5, {"D": 3, "N": 4})


def test_missing_input(rec) -> None:
    tensors = _good()
    del tensors["dt"]
    message = _bind_error(rec, tensors)
    assert "missing input 'dt'" in message and "[B, T, D]" in message


def test_missing_param(rec) -> None:
    tensors = _good()
    del tensors["A"]
    message = _bind_error(rec, tensors)
    assert "missing param 'A'" in message and "[D, N]" in message


def test_unknown_keyword(rec) -> None:
    message = _bind_error(rec, {**_good(), "delta": torch.zeros(2, 5, 3)})
    assert "'delta'" in message and "x, B, dt, A" in message


def test_wrong_rank(rec) -> None:
    message = _bind_error(rec, {**_good(), "x": torch.randn(2, 5)})
    assert "input 'x'" in message and "[2, 5]" in message and "[B, T, D]" in message


def test_wrong_rank_of_later_input(rec) -> None:
    message = _bind_error(rec, {**_good(), "dt": torch.randn(2, 5)})
    assert "input 'dt'" in message and "[2, 5]" in message and "[B, T, D]" in message


def test_mismatched_dim_sizes(rec) -> None:
    message = _bind_error(rec, {**_good(), "dt": torch.rand(2, 5, 7)})
    assert "input 'dt'" in message and "D=7" in message and "input 'x'" in message
    assert "D=3" in message


def test_mismatched_dim_between_input_and_param(rec) -> None:
    message = _bind_error(rec, {**_good(), "A": torch.rand(3, 9)})
    assert "param 'A'" in message and "N=9" in message and "N=4" in message


@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 6, 4)])
def test_wrong_batch_or_time(rec, shape) -> None:
    message = _bind_error(rec, {**_good(), "B": torch.randn(*shape)})
    assert "input 'B'" in message and str(list(shape)) in message
    assert "[B, T, N]" in message and "[2, 5]" in message


def test_integer_dtype(rec) -> None:
    message = _bind_error(rec, {**_good(), "x": torch.ones(2, 5, 3, dtype=torch.int64)})
    assert "input 'x'" in message and "torch.int64" in message and "float32" in message


def test_non_tensor(rec) -> None:
    message = _bind_error(rec, {**_good(), "x": [[1.0, 2.0, 3.0]]})
    assert "input 'x'" in message and "torch.Tensor" in message and "list" in message


def test_nan_input(rec) -> None:
    x = torch.randn(2, 5, 3)
    x[1, 2, 0] = float("nan")
    message = _bind_error(rec, {**_good(), "x": x})
    assert "input 'x'" in message and "NaN" in message


def test_nan_param(rec) -> None:
    A = torch.full((3, 4), float("nan"))
    assert "param 'A'" in _bind_error(rec, {**_good(), "A": A})


def test_bad_initial_state_shape(rec) -> None:
    message = _bind_error(rec, _good(), {"h": torch.zeros(3, 3, 4)})
    assert "initial state 'h'" in message and "[3, 3, 4]" in message and "[B, D, N]" in message


def test_bad_initial_state_dim_size(rec) -> None:
    message = _bind_error(rec, _good(), torch.zeros(2, 3, 5))
    assert "initial state 'h'" in message and "N=5" in message and "N=4" in message


def test_initial_state_names_a_non_state(rec) -> None:
    message = _bind_error(rec, _good(), {"c": torch.zeros(2, 3, 4)})
    assert "'c'" in message and "not a state" in message and "h" in message


def test_initial_state_tuple_of_wrong_length(rec) -> None:
    message = _bind_error(rec, _good(), (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)))
    assert "2 tensors" in message and "1 state" in message


def test_param_with_wrong_shape(rec) -> None:
    message = _bind_error(rec, {**_good(), "A": torch.rand(3)})
    assert "param 'A'" in message and "[3]" in message and "[D, N]" in message


def test_param_with_batch_dim(rec) -> None:
    message = _bind_error(rec, {**_good(), "A": torch.rand(2, 3, 4)})
    assert "param 'A'" in message and "[2, 3, 4]" in message and "[D, N]" in message


# ---- fuzz: mutated good specs never escape as another exception -------------

SMALL_SPECS = [
    """# minGRU
recurrence mingru {
  dims D
  input k[D], v[D]
  state h[D] = 0
  let z = sigmoid(k)
  update h = (1 - z) * h + z * v
  output h
}
""",
    """recurrence s6 {
  dims D, N
  input x[D], B[N], C[N], dt[D]
  param A[D, N], skip[D]
  state h[D, N] = 0
  let a = exp(softplus(dt) * A)
  update h = a * h + outer(dt * x, B)
  output y = h @ C + skip * x
}
""",
    """recurrence lstm {
  dims D, E
  input x[E]
  param Wi[D, E], Ui[D, D], Wf[D, E], Uf[D, D], Wo[D, E], Uo[D, D], Wc[D, E], Uc[D, D]
  state c[D] = 0
  state h[D] = 0
  let i = sigmoid(Wi @ x + Ui @ h)
  let f = sigmoid(Wf @ x + Uf @ h)
  let o = sigmoid(Wo @ x + Uo @ h)
  update c = f * c + i * tanh(Wc @ x + Uc @ h)
  update h = o * tanh(f * c + i * tanh(Wc @ x + Uc @ h))
  output h
}
""",
    """recurrence delta {
  dims K, V
  input q[K], k[K], v[V], beta
  state S[K, V] = 0
  let kn = k / sqrt(dot(k, k) + 1e-6)
  update S = S - beta * outer(kn, kn @ S) + beta * outer(kn, v)
  output o = q @ S
  output n = max(abs(sum(S)), -inf) * 0.5 + min(relu(beta), silu(log(2.0)))
}
""",
    """recurrence minmax {
  dims D
  input a[D], b[D]
  state h[D] = -inf
  state c = 0
  update h = max(min(h, a), b)
  update c = c + sum(transpose(outer(a, b)).T) / 2
  output h
  output c
}
""",
]


def _seed_specs() -> list[str]:
    bundled = sorted(SPECS.glob("*.rec")) if SPECS.is_dir() else []
    return SMALL_SPECS + [p.read_text() for p in bundled]


SEEDS = _seed_specs()
_PIECES = [
    "(", ")", "[", "]", "{", "}", ",", "=", "+", "-", "*", "/", "@", ".T", "#", "\n", " ",
    "0", "1.5e3", "inf", "-inf", "x", "h", "D", "sum", "max", "outer", "recurrence",
    "dims", "input", "param", "state", "let", "update", "output", "^", ";", ".", "\t", "é",
]  # fmt: skip
_TOKEN = re.compile(r"\.T|[A-Za-z_]\w*|\d+\.?\d*(?:[eE][+-]?\d+)?|\s+|#[^\n]*|.", re.DOTALL)


def test_seed_specs_are_valid() -> None:
    for source in SMALL_SPECS:
        load(source)


@st.composite
def mutated_spec(draw) -> str:
    source = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        tokens = _TOKEN.findall(source)
        at_token = draw(st.booleans())
        units = tokens if at_token else list(source)
        if not units:
            units = [""]
        i = draw(st.integers(0, len(units) - 1))
        j = draw(st.integers(0, len(units) - 1))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "replace"]))
        if kind == "delete":
            del units[i]
        elif kind == "duplicate":
            units.insert(i, units[i])
        elif kind == "swap":
            units[i], units[j] = units[j], units[i]
        else:
            piece = draw(st.sampled_from([*_PIECES, *tokens]))
            if kind == "insert":
                units.insert(i, piece)
            else:
                units[i] = piece
        source = "".join(units)
    return source


def _check_loads_or_rec_error(source: str) -> None:
    try:
        load(source)
    except RecError as err:
        message = str(err)
        assert "Traceback" not in message and "$END" not in message and "__ANON" not in message
        assert err.hint, f"no hint in:\n{message}"
        if err.span is not None and err.source:
            lines = message.split("\n")
            assert len(lines) >= 3 and "^" in lines[2], message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_spec())
def test_fuzz_mutated_specs(source: str) -> None:
    _check_loads_or_rec_error(source)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_spec())
def test_fuzz_mutated_specs_slow(source: str) -> None:
    _check_loads_or_rec_error(source)


@pytest.mark.parametrize("depth", [220, 300, 380])
@pytest.mark.parametrize("function", ["sigmoid", "exp", "tanh"])
def test_deep_nesting_is_a_rec_error(depth: int, function: str) -> None:
    # 200 to 300 nested calls used to pass the parser and overflow Python's stack later
    expr = "h"
    for _ in range(depth):
        expr = f"{function}({expr})"
    source = (
        "recurrence deep {\n dims D\n input x[D]\n state h[D] = 0\n"
        f" update h = {expr} + x\n output h\n}}"
    )
    with pytest.raises(RecError, match="nest|nested too deeply"):
        recc.compile(source)
