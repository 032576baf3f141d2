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


def test_check_directory_prints_a_table_and_passes():
    result = CliRunner().invoke(main, ["check", str(SPECS)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:5] == ["spec", "class", "jacobian", "lowering", "status"]
    assert sum(" ok (form " in line for line in lines) == len(list(SPECS.glob("*.rec")))


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
