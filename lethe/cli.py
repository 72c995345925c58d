"""The `lethe` command line (SPEC "Command line").

Every failure is one line on stderr and a non-zero exit code. Orchestrated commands
(`run`, `demo`) import the Dagster layer lazily: the core itself stays Dagster-free.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import duckdb
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lethe.compliance.breaches import close_breach, list_breaches, mark_notified, record_breach
from lethe.compliance.processors import export_to_processor, processor_access, revoke
from lethe.compliance.summary import TableSummary, summarize
from lethe.declaration.fides import fides_yaml
from lethe.declaration.policy import load_policy
from lethe.declaration.schema import Schema, load_schema
from lethe.engine.audit import verify
from lethe.engine.keyhash import short
from lethe.engine.states import STORED_STATES
from lethe.engine.warehouse import connect
from lethe.errors import LetheError
from lethe.operations.backup import create_backup
from lethe.operations.files import owner_only_umask
from lethe.operations.home import Home
from lethe.operations.lock import exclusive
from lethe.operations.restore import restore as restore_backup
from lethe.rights.holds import place_hold, release_hold
from lethe.rights.requests import extend_request, list_requests, parse_changes, record_request

app = typer.Typer(
    help="Lethe: GDPR retention and anonymization as scheduled Dagster pipelines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
policy_app = typer.Typer(help="Validate retention policies.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
schema_app = typer.Typer(help="Validate and export declared schemas.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")
hold_app = typer.Typer(help="Place and release a litigation hold.", no_args_is_help=True)
app.add_typer(hold_app, name="hold")
audit_app = typer.Typer(help="Inspect the audit ledger.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

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
    contacts: Annotated[int, typer.Option(min=1, help="Number of customers to generate.")],
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
) -> None:
    """Generate realistic Czech synthetic data into LETHE_HOME/landing."""
    from lethe.eshop.generate import generate as run_generate

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
        task = progress.add_task(f"Generating {contacts:,} customers", total=4)

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

    # The summary is read under the same lock: a run waiting for it would otherwise find
    # the warehouse open here.
    with exclusive(home.lock):
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            progress.add_task(f"Running the pipeline as of {when}", total=None)
            outcome = run_pipeline(home, when, str(policy) if policy else None)
        con = connect(home.warehouse, read_only=True)
        try:
            summaries = summarize(con, load_policy(policy), outcome.run_id)
        finally:
            con.close()
    _print_summary(summaries, when, outcome.run_id)
    for check in outcome.failed_checks:
        err.print(f"[yellow]check failed:[/] {check}", highlight=False, soft_wrap=True)
    if not outcome.success:
        _fail("; ".join(outcome.errors) or f"run {outcome.run_id} failed")


def _print_summary(summaries: list[TableSummary], when: dt.date, run_id: str) -> None:
    states = STORED_STATES
    table = Table(title=f"Lethe warehouse as of {when} (run {run_id[:8]})")
    table.add_column("table")
    for col in ("rows", "past retention", *states, "held"):
        table.add_column(col, justify="right")
    for s in summaries:
        table.add_row(
            s.table,
            f"{s.rows:,}",
            f"{s.past_retention:,}",
            *(f"{s.by_state.get(state, 0):,}" for state in states),
            f"{s.held:,}",
        )
    out.print(table)
    done = Table(title="This run: rows per action")
    done.add_column("table")
    actions = ("erase", "pseudonymize", "anonymize", "delete")
    for col in ("columns erased", "pseudonymized", "anonymized", "deleted"):
        done.add_column(col, justify="right")
    for s in summaries:
        done.add_row(s.table, *(f"{s.actions.get(a, 0):,}" for a in actions))
    out.print(done)
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
    contacts: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate synthetic data, run the pipeline as of today and print a summary."""
    from lethe.eshop.generate import generate as run_generate

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


def _schema(file: Path | None) -> Schema:
    """A schema file, or the schema the default policy names."""
    return load_schema(file) if file else load_policy().data_schema


@schema_app.command("check")
def schema_check(
    file: Annotated[
        Path | None, typer.Argument(help="Schema YAML (default: the default policy's).")
    ] = None,
) -> None:
    """Validate a schema file and list its tables and how each reaches its data subject."""
    schema = _schema(file)
    for table in schema.tables.values():
        via = [fk.ref_table for fk in schema.path_to_subject(table.name)]
        role = "the data subjects" if table.subject else "subject via " + " -> ".join(via)
        out.print(
            f"{table.name}: key {table.key}, {len(table.columns)} columns; {role}",
            highlight=False,
        )
    out.print(f"{schema.source}: valid ({len(schema.tables)} tables)", highlight=False)


@schema_app.command("export")
def schema_export(
    file: Annotated[
        Path | None, typer.Argument(help="Schema YAML (default: the default policy's).")
    ] = None,
    fides: Annotated[bool, typer.Option("--fides", help="As a Fides dataset.")] = False,
    output: Annotated[
        Path | None, typer.Option("--out", help="Write to this file (default: stdout).")
    ] = None,
    key: Annotated[str, typer.Option(help="The Fides dataset's fides_key.")] = "lethe",
) -> None:
    """Export a schema in another tool's format (today: Fides)."""
    if not fides:
        _fail("choose a format: --fides")
    text = fides_yaml(_schema(file), key)
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text, encoding="utf-8")
    out.print(f"{output}: Fides dataset {key!r} written", highlight=False)


@contextmanager
def _warehouse(write: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    home = Home.from_env().ensure()
    if not home.warehouse.exists():
        _fail(f"{home.warehouse}: no warehouse yet (run `lethe run` first)")
    with exclusive(home.lock, shared=not write):
        con = connect(home.warehouse, read_only=not write)
        try:
            yield con
        finally:
            con.close()


@hold_app.command("add")
def hold_add(
    subject: Annotated[str, typer.Option(help="The subject's key or e-mail address.")],
    reason: Annotated[str, typer.Option(help="Why the data must be kept (the case).")],
) -> None:
    """Freeze every row of a data subject until the hold is released."""
    policy = load_policy()
    with _warehouse() as con:
        hold_id = place_hold(con, policy, subject, reason)
    out.print(f"hold {hold_id} placed; the subject's rows are frozen from the next run")


@hold_app.command("release")
def hold_release(
    subject: Annotated[str, typer.Option(help="The subject's key or e-mail address.")],
    reason: Annotated[str, typer.Option(help="Why the hold ends.")],
) -> None:
    """Release a subject's open holds; retention applies again from the next run."""
    policy = load_policy()
    with _warehouse() as con:
        n = release_hold(con, policy, subject, reason)
    out.print(f"{n} hold(s) released")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit ledger's hash chain: any edited, removed or reordered entry fails."""
    with _warehouse(write=False) as con:
        result = verify(con)
    if not result.ok:
        _fail(f"audit ledger: {result.problem}")
    out.print(f"audit ledger: {result.entries} entries, chain intact")


@app.command()
def request(
    kind: Annotated[
        str,
        typer.Argument(
            metavar="TYPE",
            help="access | portability | erasure | rectification | restriction | objection,"
            " or `extend` to extend a request's deadline",
        ),
    ],
    request_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="Request id (with `extend`).")
    ] = None,
    subject: Annotated[
        str | None, typer.Option(help="The subject's key or e-mail address.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="column=value (rectification; repeatable).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why (kept with the request).")] = None,
) -> None:
    """Record a data-subject request (deadline: one calendar month); the next run (or the
    request sensor) carries it out."""
    if kind == "extend":
        if not request_id:
            _fail("request extend: give the request id")
        with _warehouse() as con:
            extended = extend_request(con, request_id, reason or "")
        out.print(f"{extended.request_id}: deadline extended to {extended.deadline:%Y-%m-%d}")
        return
    if not subject:
        _fail("--subject: required (the subject's key or an e-mail address)")
    schema = load_policy().data_schema
    changes = parse_changes(schema, set_ or []) if kind == "rectification" else None
    if set_ and kind != "rectification":
        _fail("--set applies to rectification requests only")
    with _warehouse() as con:
        recorded = record_request(con, schema, kind, subject, changes, reason)
    out.print(
        f"{recorded.request_id}: {recorded.type} request recorded;"
        f" due by {recorded.deadline:%Y-%m-%d}",
        highlight=False,
    )


@app.command("requests")
def list_requests_command(
    overdue: Annotated[bool, typer.Option("--overdue", help="Only overdue requests.")] = False,
) -> None:
    """List data-subject requests with status and deadline."""
    with _warehouse(write=False) as con:
        rows = list_requests(con, overdue_only=overdue)
    table = Table(title="Overdue requests" if overdue else "Data-subject requests")
    for col in ("id", "type", "subject", "received", "deadline", "status"):
        table.add_column(col, no_wrap=True)
    for rid, kind, subject_key, received, deadline, status, late in rows:
        table.add_row(
            rid,
            kind,
            short(subject_key),  # a gone subject: its keyed hash, shortened
            f"{received:%Y-%m-%d}",
            f"{deadline:%Y-%m-%d}",
            "[red]overdue[/]" if late else status,
        )
    out.print(table)


@app.command()
def backup() -> None:
    """Write a compressed backup of the warehouse under LETHE_HOME/backups."""
    home = Home.from_env().ensure()
    if not home.warehouse.exists():
        _fail(f"{home.warehouse}: no warehouse yet (run `lethe run` first)")
    with exclusive(home.lock):
        made = create_backup(home)
    out.print(f"backup {made.id} written ({made.path})", highlight=False)


@app.command()
def restore(
    backup_id: Annotated[str, typer.Argument(help="Backup id, as listed under backups/.")],
    policy: Annotated[Path | None, typer.Option("--policy", help="Policy file.")] = None,
) -> None:
    """Restore a backup; every erasure recorded since is re-applied before it is visible."""
    home = Home.from_env().ensure()
    loaded = load_policy(policy)
    with exclusive(home.lock):
        result = restore_backup(home, backup_id, loaded)
    out.print(
        f"restored {backup_id}; re-applied retention as of {result.reapplied_as_of}"
        f" ({result.erasures_since_backup} erasure batches since the backup)",
        highlight=False,
    )


# --- processors and breaches ----------------------------------------------------------------

processor_app = typer.Typer(
    help="Processors: list them, export to them, revoke their access.", no_args_is_help=True
)
app.add_typer(processor_app, name="processor")
breach_app = typer.Typer(
    help="Personal data breaches: record them and their notifications.", no_args_is_help=True
)
app.add_typer(breach_app, name="breach")
PolicyOption = Annotated[
    Path | None, typer.Option("--policy", help="Policy file (default policies/default.yaml).")
]


def _when(value: str | None, option: str) -> dt.datetime | None:
    """An ISO 8601 time from the command line (without an offset: UTC)."""
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        _fail(f"{option}: {value!r} is not a time (use YYYY-MM-DDTHH:MM, UTC)", 2)
        raise
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@processor_app.command("list")
def processor_list(policy: PolicyOption = None) -> None:
    """List the policy's processors and whether they may receive exports now."""
    loaded = load_policy(policy)
    with _warehouse(write=False) as con:
        accesses = processor_access(con, loaded, dt.datetime.now(dt.UTC))
    table = Table(title="Processors")
    for col in ("processor", "purpose", "contract end", "access now"):
        table.add_column(col)
    for a in accesses:
        table.add_row(
            a.processor.name,
            a.processor.purpose,
            str(a.processor.contract_end or "open-ended"),
            ("yes: " if a.allowed else "[red]no[/]: ") + a.reason,
        )
    out.print(table)


@processor_app.command("export")
def processor_export(
    name: Annotated[str, typer.Argument(help="Processor name, as in the policy.")],
    policy: PolicyOption = None,
) -> None:
    """Export the data shared with a processor; refused (logged, alerted) once its contract
    has ended or its access was revoked."""
    loaded = load_policy(policy)
    home = Home.from_env().ensure()
    with _warehouse() as con:
        made = export_to_processor(
            con, home, loaded, name, dt.datetime.now(dt.UTC), f"cli-{uuid.uuid4()}"
        )
    rows = ", ".join(f"{n:,} {t}" for t, n in made.rows.items())
    out.print(f"{made.export_id}: {rows} exported to {made.path}", highlight=False)


@processor_app.command("revoke")
def processor_revoke(
    name: Annotated[str, typer.Argument(help="Processor name, as in the policy.")],
    reason: Annotated[str, typer.Option(help="Why access ends (kept in the log).")] = "",
    policy: PolicyOption = None,
) -> None:
    """End a processor's export access at once."""
    loaded = load_policy(policy)
    with _warehouse() as con:
        access = revoke(con, loaded, name, reason, dt.datetime.now(dt.UTC))
    out.print(f"{name}: export access ended ({access.reason})", highlight=False)


@breach_app.command("record")
def breach_record(
    description: Annotated[str, typer.Option(help="What happened, which data, which cause.")],
    aware_at: Annotated[
        str | None, typer.Option(help="When you became aware (ISO 8601, UTC; default: now).")
    ] = None,
    processor: Annotated[str | None, typer.Option(help="The processor concerned.")] = None,
    processor_aware_at: Annotated[
        str | None, typer.Option(help="When the processor became aware (starts its 48 h).")
    ] = None,
    processor_notified_at: Annotated[
        str | None, typer.Option(help="When the processor notified you, if it has.")
    ] = None,
    subjects: Annotated[int | None, typer.Option(help="Data subjects affected, if known.")] = None,
    policy: PolicyOption = None,
) -> None:
    """Record a personal data breach; prints the notification deadlines."""
    loaded = load_policy(policy)
    now = dt.datetime.now(dt.UTC)
    with _warehouse() as con:
        breach = record_breach(
            con,
            loaded,
            description,
            _when(aware_at, "--aware-at") or now,
            now,
            processor=processor,
            processor_aware_at=_when(processor_aware_at, "--processor-aware-at"),
            processor_notified_at=_when(processor_notified_at, "--processor-notified-at"),
            subjects_affected=subjects,
        )
    stamp = "%Y-%m-%d %H:%M UTC"
    due = f"{breach.breach_id} recorded; notify the authority by"
    due += f" {breach.authority_deadline.strftime(stamp)}"
    if breach.awaiting_processor and breach.processor_deadline:
        due += f"; {processor} must notify you by {breach.processor_deadline.strftime(stamp)}"
    out.print(due, highlight=False)


@breach_app.command("notified")
def breach_notified(
    breach_id: Annotated[str, typer.Argument(help="Breach id (B-...).")],
    party: Annotated[
        str, typer.Option(help="authority (you notified it) or processor (it notified you).")
    ],
    at: Annotated[str | None, typer.Option(help="When (ISO 8601, UTC; default: now).")] = None,
) -> None:
    """Record a notification of a breach."""
    if party not in ("authority", "processor"):
        _fail(f"--party: {party!r} is not authority or processor", 2)
    now = dt.datetime.now(dt.UTC)
    with _warehouse() as con:
        mark_notified(con, breach_id, party, _when(at, "--at") or now, now)  # type: ignore[arg-type]
    out.print(f"{breach_id}: {party} notification recorded", highlight=False)


@breach_app.command("close")
def breach_close(
    breach_id: Annotated[str, typer.Argument(help="Breach id (B-...).")],
    reason: Annotated[str, typer.Option(help="Why it is unlikely to result in a risk.")],
) -> None:
    """Close a breach assessed as unlikely to result in a risk (no authority notification)."""
    with _warehouse() as con:
        close_breach(con, breach_id, reason, dt.datetime.now(dt.UTC))
    out.print(f"{breach_id}: closed without notification; the assessment is recorded")


@breach_app.command("list")
def breach_list(
    overdue: Annotated[bool, typer.Option("--overdue", help="Only overdue breaches.")] = False,
) -> None:
    """List breach records with their deadlines."""
    now = dt.datetime.now(dt.UTC)
    with _warehouse(write=False) as con:
        register = list_breaches(con)
    table = Table(title="Overdue breaches" if overdue else "Breaches")
    for col in ("id", "source", "processor", "aware (UTC)", "authority deadline", "status"):
        table.add_column(col, no_wrap=True)
    for b in register:
        late = b.overdue(now)
        if overdue and not late:
            continue
        status = (
            "[red]overdue[/]" if late else ("open" if b.open or b.awaiting_processor else "done")
        )
        table.add_row(
            b.breach_id,
            b.source,
            b.processor or "",
            f"{b.aware_at:%Y-%m-%d %H:%M}",
            f"{b.authority_deadline:%Y-%m-%d %H:%M}",
            status,
        )
    out.print(table)


def main() -> None:
    """Console-script entry point: every failure is one line on stderr and a non-zero exit.

    LetheError (bad input) exits 1; anything unexpected exits 2 with its type and first
    line; LETHE_DEBUG=1 shows the traceback instead.
    """
    try:
        with owner_only_umask():
            app()
    except LetheError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as exc:
        if os.environ.get("LETHE_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        err.print(
            f"[bold red]error:[/] unexpected {type(exc).__name__}: {first}"
            " (set LETHE_DEBUG=1 for details)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
