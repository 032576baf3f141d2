"""The `recc` command line (click).

Stage: top level. Commands:
  recc build SPEC -o DIR one readable Python module: kernels, autograd Function, wrapper
  recc explain SPEC...   what the analysis found and which lowering it picks
  recc check SPEC|DIR... every executor against the interpreter; a table;
                         exit 1 on any mismatch, 2 on a spec error
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
import traceback
from pathlib import Path

import click

from recc.analysis import analyze
from recc.api import check_strategy
from recc.backends.registry import NAMES, REFERENCE, REGISTRY, verdicts
from recc.errors import RecError
from recc.ir import load
from recc.lowering import STRATEGIES, LoweringPlan, plan
from recc.report import explain as explain_text
from recc.testing.regimes import LENGTHS, REGIMES
from recc.verify import TOLERANCE, check

REGIME_ORDER = [r.name for r in REGIMES]


def _spec_paths(paths: tuple[str, ...]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found.extend(sorted(path.glob("*.rec")))
        else:
            found.append(path)
    if not found:
        raise click.UsageError("no .rec files found in " + ", ".join(paths))
    return found


def _fail_internal(err: Exception) -> None:
    click.echo(f"recc: internal error: {type(err).__name__}: {err}", err=True)
    click.echo("  this is a bug in recc, not in your spec; please report it", err=True)
    if os.environ.get("RECC_DEBUG"):
        traceback.print_exc()
    else:
        click.echo("  (set RECC_DEBUG=1 for the traceback)", err=True)


@click.group()
@click.version_option(package_name="recc")
def main() -> None:
    """recc: a compiler for recurrences."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--registers/--no-registers",
    default=True,
    show_default=True,
    help="Compile the Triton kernels ahead of time (sm_90) and report registers.",
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default="auto",
    show_default=True,
    help="The form to explain, as recc.compile(..., strategy=) takes it.",
)
def explain(paths: tuple[str, ...], registers: bool, strategy: str) -> None:
    """Simplified transition, class, canonical form, Jacobian and lowering."""
    status = 0
    for path in _spec_paths(paths):
        try:
            rec = load(path)
            lowering = plan(rec, analyze(rec), strategy)
            check_strategy(rec, lowering, strategy)
            click.echo(explain_text(lowering, registers=registers))
            click.echo()
        except RecError as err:
            click.echo(str(err), err=True)
            status = 2
        except Exception as err:  # noqa: BLE001 - reported as a bug, never a bare traceback
            _fail_internal(err)
            status = 3
    sys.exit(status)


@main.command()
@click.argument("path", type=click.Path())
@click.option(
    "-o",
    "--out",
    "out_dir",
    default=".",
    show_default=True,
    type=click.Path(),
    help="Folder to write <name>.py into.",
)
def build(path: str, out_dir: str) -> None:
    """Generate the spec's module: Triton kernels, autograd Function and wrapper."""
    try:
        rec = load(path)
        lowering = plan(rec, analyze(rec))
        source = _module_source(lowering)
        target = _write_module(Path(out_dir), rec.name, source)
        click.echo(explain_text(lowering))
        click.echo(
            f"\nwrote {target} ({len(source.splitlines())} lines): "
            + (
                "Triton forward and backward kernels, autograd Function, "
                if "\nNO_KERNELS = None\n" in source
                else "no Triton kernels (the torch loop only), "
            )
            + f"`{rec.name}(...)`; it runs with torch and triton alone"
        )
    except RecError as err:
        click.echo(str(err), err=True)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001
        _fail_internal(err)
        sys.exit(3)


def _module_source(lowering: LoweringPlan) -> str:
    """The module of the first backend that builds one for this plan."""
    reasons = []
    for backend in REGISTRY:
        if not backend.builds:
            continue
        reason = backend.supports(lowering)
        if reason is None:
            return backend.build(lowering)
        reasons.append(f"{backend.name}: {reason}")
    runs_on = [b.name for b, reason in verdicts(lowering) if reason is None]
    raise RecError(
        f"'{lowering.spec.name}' ({lowering.kind}) has no generated module yet "
        f"({'; '.join(reasons)})",
        hint=f"it still runs through recc.compile() on: {', '.join(runs_on)}",
    )


def _write_module(folder: Path, name: str, source: str) -> Path:
    """Write `folder/<name>.py` atomically (a unique temporary file, then a rename, so
    concurrent builds into one folder never see half a file); a folder that cannot
    hold it is a RecError that says why."""
    if folder.exists() and not folder.is_dir():
        raise RecError(
            f"-o {folder} is a file, not a folder",
            hint="pass the folder to write the module into (it is created if missing)",
        )
    target = folder / f"{name}.py"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name[:40]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(source)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        reason = err.strerror or type(err).__name__
        hint = "choose a folder you can write to with -o"
        if err.errno == errno.ENAMETOOLONG:
            hint = "the recurrence's name is too long for a file name: shorten it"
        raise RecError(f"cannot write {target}: {reason}", hint=hint) from None
    return target


@main.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--seed", default=0, show_default=True, help="Seed for the random inputs.")
@click.option("--explain", "with_explain", is_flag=True, help="Print each spec's explanation.")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice([n for n in NAMES if n != REFERENCE.name]),
    help="Check only this backend (repeat for several); default: every one that runs here.",
)
def check_command(
    paths: tuple[str, ...], seed: int, with_explain: bool, backends: tuple[str, ...]
) -> None:
    """Run every executor of each spec against the interpreter (fp64, adversarial regimes)."""
    rows = []
    results = []
    status = 0
    for path in _spec_paths(paths):
        try:
            result = check(load(path), seed=seed, backends=backends or None)
            results.append(result)
        except RecError as err:
            click.echo(str(err), err=True)
            rows.append((path.stem, "-", "-", "-", "SPEC ERROR", ""))
            status = max(status, 2)
            continue
        except Exception as err:  # noqa: BLE001
            _fail_internal(err)
            rows.append((path.stem, "-", "-", "-", "INTERNAL ERROR", ""))
            status = 3
            continue
        a = result.analysis
        kind = a.kind + (f" r{a.rank}" if a.kind == "dplr" else "")
        kind += f" {a.semiring}" if a.kind == "minmax" else ""
        verdict = "ok" if result.ok else "MISMATCH"
        if not result.ok:
            status = max(status, 1)
        if with_explain:
            click.echo(explain_text(result.plan) + "\n")
        ran = ", ".join(result.checked)
        not_run = "".join(f"; {b} not run" for b in result.skipped)
        rows.append(
            (
                path.stem,
                kind,
                a.jacobian.describe(),
                result.plan.algorithm,
                f"{verdict} ({ran}{not_run})",
                f"{result.seconds:.2f}s",
            )
        )
    header = ("spec", "class", "jacobian", "lowering", "status", "time")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    for result in results:
        for failure in result.failures:
            click.echo(f"\nMISMATCH {result.rec.name}: {failure}")
        for aside in result.set_aside:
            click.echo(
                f"\nset aside {result.rec.name}: {aside} (ill-conditioned: the interpreter's "
                "own result moves by more than the tolerance under a one-ulp change of "
                "its inputs, so no order of evaluation is more right)"
            )
    n_ok = sum(1 for r in rows if r[4].startswith("ok"))
    regimes = sorted({name for r in results for name in r.regimes}, key=REGIME_ORDER.index)
    click.echo(
        f"\n{n_ok} of {len(rows)} specs agree with the interpreter (fp64; NaN and inf at "
        f"the same places, finite values to {TOLERANCE:g} relative; where the "
        "interpreter overflows, outputs up to that step)\n"
        f"  in the regimes {', '.join(regimes)} at T = {', '.join(map(str, LENGTHS))}:\n"
        "  form = the canonical form, step by step;\n"
        "  torch, triton = the backend's outputs, final states and all gradients\n"
        "  (gradients where the interpreter's results hold no NaN; see recc.testing.agree)."
    )
    reasons = {r for row in results for r in row.skipped.items()}
    for backend, reason in sorted(reasons):
        click.echo(f"  {backend} not run: {reason}")
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
