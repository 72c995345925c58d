"""The `lethe` command line (SPEC "Command line").

Every failure is one line on stderr and a non-zero exit code. Orchestrated commands
(`run`, `demo`) import the Dagster layer lazily: the core itself stays Dagster-free.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lethe.errors import LetheError
from lethe.home import Home
from lethe.lock import exclusive
from lethe.policy import load_policy
from lethe.summary import TableSummary, summarize
from lethe.warehouse import connect

app = typer.Typer(
    help="Lethe: GDPR retention and anonymization as scheduled Dagster pipelines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
policy_app = typer.Typer(help="Validate retention policies.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _date(value: str | None) -> dt.date:
    if not value:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        _fail(f"--as-of: {value!r} is not a date (use YYYY-MM-DD)", 2)
        raise


@app.command()
def generate(
    contacts: Annotated[int, typer.Option(min=1, help="Number of contacts to generate.")],
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
) -> None:
    """Generate realistic Czech synthetic data into LETHE_HOME/landing."""
    from lethe.generate import generate as run_generate

    home = Home.from_env().ensure()
    counts = _generate(run_generate, home, contacts, seed)
    out.print(
        f"Generated into {home.landing}: " + ", ".join(f"{n:,} {t}" for t, n in counts.items()),
        highlight=False,
    )


def _generate(run_generate, home: Home, contacts: int, seed: int) -> dict[str, int]:
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tables"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"Generating {contacts:,} contacts", total=4)

        def step(name: str, rows: int) -> None:
            progress.update(task, advance=1, description=f"Wrote {name} ({rows:,} rows)")

        return run_generate(home.landing, contacts, seed=seed, progress=step)


@app.command()
def run(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Evaluate retention at this date (YYYY-MM-DD).")
    ] = None,
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Policy file (default policies/default.yaml).")
    ] = None,
) -> None:
    """Run the whole pipeline once (ingest, tag, enforce) as a Dagster run."""
    when = _date(as_of)
    load_policy(policy)  # refuse an invalid policy before anything runs
    _run_and_report(Home.from_env().ensure(), when, policy)


def _run_and_report(home: Home, when: dt.date, policy: Path | None) -> None:
    from pipelines.launch import run_pipeline

    with (
        exclusive(home.lock),
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress,
    ):
        progress.add_task(f"Running the pipeline as of {when}", total=None)
        outcome = run_pipeline(home, when, str(policy) if policy else None)
    con = connect(home.warehouse, read_only=True)
    try:
        _print_summary(summarize(con), when, outcome.run_id)
    finally:
        con.close()
    for check in outcome.failed_checks:
        err.print(f"[yellow]check failed:[/] {check}", highlight=False, soft_wrap=True)
    if not outcome.success:
        _fail("; ".join(outcome.errors) or f"run {outcome.run_id} failed")


def _print_summary(summaries: list[TableSummary], when: dt.date, run_id: str) -> None:
    states = ("active", "expired", "restricted", "pseudonymized", "anonymized")
    table = Table(title=f"Lethe warehouse as of {when} (run {run_id[:8]})")
    table.add_column("table")
    for col in ("rows", "past retention", *states):
        table.add_column(col, justify="right")
    for s in summaries:
        table.add_row(
            s.table,
            f"{s.rows:,}",
            f"{s.past_retention:,}",
            *(f"{s.by_state.get(state, 0):,}" for state in states),
        )
    out.print(table)
    purposes = Table(title="Rows kept per purpose and legal basis")
    purposes.add_column("purpose / legal basis")
    for s in summaries:
        purposes.add_column(s.table, justify="right")
    names = sorted({p for s in summaries for p in s.by_purpose})
    bases = sorted({b for s in summaries for b in s.by_legal_basis})
    for name in names:
        purposes.add_row(name, *(f"{s.by_purpose.get(name, 0):,}" for s in summaries))
    for basis in bases:
        purposes.add_row(
            f"[italic]{basis}[/]", *(f"{s.by_legal_basis.get(basis, 0):,}" for s in summaries)
        )
    out.print(purposes)


@app.command()
def demo(
    contacts: Annotated[int, typer.Option(min=1, help="Number of contacts.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate synthetic data, run the pipeline as of today and print a summary."""
    from lethe.generate import generate as run_generate

    home = Home.from_env().ensure()
    _generate(run_generate, home, contacts, seed)
    _run_and_report(home, _date(None), None)


@policy_app.command("check")
def policy_check(
    file: Annotated[Path | None, typer.Argument(help="Policy YAML (default: the default).")] = None,
) -> None:
    """Validate a policy file and list its purposes."""
    policy = load_policy(file)
    for p in policy.all_purposes().values():
        out.print(
            f"{p.name}: {p.legal_basis}; {p.retention.describe()}; keeps " + ", ".join(p.keeps),
            highlight=False,
        )
    out.print(f"{policy.source}: valid ({len(policy.purposes)} purposes)", highlight=False)


def main() -> None:
    """Console-script entry point: LetheError → one line on stderr, exit 1."""
    try:
        app()
    except LetheError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
