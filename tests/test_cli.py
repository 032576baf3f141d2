"""The `recc` command line: explain, check, exit codes, error output."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from recc.cli import main

SPECS = Path(__file__).parent.parent / "specs"


def test_explain_prints_class_form_and_lowering():
    result = CliRunner().invoke(main, ["explain", str(SPECS / "mingru.rec")])
    assert result.exit_code == 0, result.output
    for text in ("class: diagonal", "canonical form:", "a_h_h = 1 - z", "lowering:", "Jacobian"):
        assert text in result.output
    # the generated Triton kernels, compiled ahead of time for sm_90
    assert "backward" in result.output and "registers/thread, spills 0+0 B" in result.output


def test_explain_takes_a_strategy():
    runner = CliRunner()
    result = runner.invoke(
        main, ["explain", "--no-registers", "--strategy", "chunkwise", str(SPECS / "gla.rec")]
    )
    assert result.exit_code == 0, result.output
    assert "lowering: chunkwise algorithm" in result.output
    assert "chunkwise kernels run the forward" in result.output
    result = runner.invoke(
        main, ["explain", "--strategy", "scan", str(SPECS / "gated_deltanet.rec")]
    )
    assert result.exit_code == 2
    assert "strategy='scan' cannot run 'gated_deltanet'" in result.output


def test_check_directory_prints_a_table_and_passes():
    result = CliRunner().invoke(main, ["check", str(SPECS), "--backend", "torch"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:5] == ["spec", "class", "jacobian", "lowering", "status"]
    assert sum(" ok (form" in line for line in lines) == len(list(SPECS.glob("*.rec")))
    assert "integers, zeros, saturating, huge, tiny" in result.output


def test_check_names_the_regime_that_failed(tmp_path, monkeypatch):
    # A backend that routes MinMax gradients by the canonical form, as recc once did:
    # the integer regime (ties the spec does not have) must catch it, and say so.
    from recc.backends.torch import scan

    spec = tmp_path / "clamp.rec"
    spec.write_text(
        "recurrence clamp {\n dims D\n input a[D], b[D]\n state h[D] = 0\n"
        " update h = max(min(h, a), b)\n output h\n}\n"
    )
    monkeypatch.setattr(scan, "needs_grad", lambda bound: False)
    result = CliRunner().invoke(main, ["check", str(spec), "--backend", "torch"])
    assert result.exit_code == 1, result.output
    assert "MISMATCH clamp: torch [integers, T=" in result.output
    assert "gradient of" in result.output


def test_bad_spec_is_a_located_error_without_traceback(tmp_path):
    bad = tmp_path / "bad.rec"
    bad.write_text(
        "recurrence b {\n dims D\n input k[D]\n state h[D] = 0\n update h = h * kk\n output h\n}\n"
    )
    for command in ("explain", "check"):
        result = CliRunner().invoke(main, [command, str(bad)])
        assert result.exit_code == 2
        assert "bad.rec:5:17: unknown name 'kk'" in result.output
        assert "hint: did you mean 'k'?" in result.output
        assert "Traceback" not in result.output


def test_missing_file():
    result = CliRunner().invoke(main, ["explain", "no/such.rec"])
    assert result.exit_code == 2
    assert "no such spec file" in result.output


def _build(*args: str):
    return CliRunner().invoke(main, ["build", str(SPECS / "mingru.rec"), *args])


def test_build_into_a_file_is_a_user_error(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    for out in (target, target / "sub"):
        result = _build("-o", str(out))
        assert result.exit_code == 2, result.output
        assert "internal error" not in result.output and "Traceback" not in result.output
    assert "is a file, not a folder" in _build("-o", str(target)).output
    assert "cannot write" in _build("-o", str(target / "sub")).output


def test_build_of_a_name_too_long_for_a_file(tmp_path):
    spec = tmp_path / "long.rec"
    name = "r" * 300
    spec.write_text(
        f"recurrence {name} {{\n dims D\n input x[D]\n state h[D] = 0\n"
        " update h = 0.5 * h + x\n output h\n}\n"
    )
    result = CliRunner().invoke(main, ["build", str(spec), "-o", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "too long for a file name" in result.output


def test_concurrent_builds_into_one_folder(tmp_path):
    import threading

    from recc.cli import _write_module

    errors = []

    def write(i: int) -> None:
        try:
            for j in range(100):
                _write_module(tmp_path, "mingru", f"# build {i} {j}\n")
        except BaseException as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == ["mingru.py"]
