"""The `lethe` command line (SPEC "Command line").

Every failure is one line on stderr and a non-zero exit code. Orchestrated commands
(`run`, `demo`) import the Dagster layer lazily: the core itself stays Dagster-free.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import duckdb
import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lethe.compliance import postgres_processors
from lethe.compliance.breaches import close_breach, list_breaches, mark_notified, record_breach
from lethe.compliance.processors import export_to_processor, processor_access, revoke
from lethe.compliance.summary import (
    RUN_ACTIONS,
    TableSummary,
    legal_basis_rows,
    purpose_rows,
    summarize,
)
from lethe.declaration.fides import fides_yaml
from lethe.declaration.policy import LEGAL_BASIS_ARTICLE, Policy, load_policy
from lethe.declaration.schema import Schema, load_schema
from lethe.engine import postgres_run
from lethe.engine import postgres_warehouse as warehouse_db
from lethe.engine.audit import VerifyResult, verify
from lethe.engine.keyhash import short
from lethe.engine.states import STORED_STATES
from lethe.engine.warehouse import connect
from lethe.errors import LetheError
from lethe.operations import postgres_backup
from lethe.operations.backup import create_backup, expire_backups
from lethe.operations.files import owner_only_umask
from lethe.operations.home import Home
from lethe.operations.lock import exclusive
from lethe.operations.resharding import LEDGERS, reshard
from lethe.operations.restore import restore as restore_backup
from lethe.operations.shards import (
    check_layout,
    request_shard,
    shard_count,
    shard_homes,
    shard_names,
    subject_shard,
)
from lethe.rights import postgres_holds, postgres_requests
from lethe.rights.exports import export_dir
from lethe.rights.holds import place_hold, release_hold
from lethe.rights.requests import (
    REQUEST_TYPES,
    describe_answer,
    extend_request,
    list_requests,
    parse_changes,
    record_request,
)
from lethe.sources import postgres_propagation
from lethe.sources.propagation import SourceOutcome, preview_request
from lethe.sources.propagation import propagate as propagate_changes

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
# What runs on a PostgreSQL warehouse (LETHE_WAREHOUSE); every other command is refused.
ON_POSTGRES = frozenset(
    {"run", "request", "requests", "hold", "audit", "policy", "schema", "generate"}
    | {"processor", "breach", "propagate", "backup", "restore"}
)


@app.callback()
def _where_it_runs(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand not in ON_POSTGRES:
        warehouse_db.refuse_here(f"lethe {ctx.invoked_subcommand}")


# Exit codes (README "Exit codes"): 0 done, and these.
PROBLEM = 1  # Lethe refused the input, or a run failed or completed with a problem
USAGE = 2  # the command line is wrong (as Click and argparse exit on usage errors)
UNEXPECTED = 3  # a bug or an unforeseen failure


def _fail(message: str, code: int = PROBLEM) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _date(value: str | None) -> dt.date:
    if not value:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        _fail(f"--as-of: {value!r} is not a date (use YYYY-MM-DD)", USAGE)
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
    shard: Annotated[
        list[str] | None,
        typer.Option(
            "--shard",
            help="With LETHE_SHARDS > 1: run only this shard (repeatable; e.g. the shard a"
            " request went to), then the analytics over all shards.",
        ),
    ] = None,
) -> None:
    """Run the whole pipeline once (ingest, tag, enforce) as a Dagster run."""
    when = _date(as_of)
    load_policy(policy)  # refuse an invalid policy before anything runs
    if shard and shard_count() == 1:
        _fail("--shard: there are no shards (set LETHE_SHARDS to more than 1)", USAGE)
    if shard:
        unknown = sorted(set(shard) - set(shard_names(shard_count())))
        if unknown:
            _fail(
                f"--shard: {unknown[0]!r} is not a shard (LETHE_SHARDS={shard_count()}:"
                f" {', '.join(shard_names(shard_count()))})",
                USAGE,
            )
    dsn = _postgres_warehouse()
    if dsn:
        _run_on_postgres(dsn, Home.from_env().ensure(), when, load_policy(policy))
        return
    home = Home.from_env()
    if shard:
        check_layout(home, shard_count())  # a run of some shards re-shards nothing
    _run_and_report(home.ensure(), when, policy, shard)


def _run_on_postgres(dsn: str, home: Home, when: dt.date, policy: Policy) -> None:
    """`lethe run` on a PostgreSQL warehouse (`lethe.engine.postgres_run`), reported in
    lines of at most 80 columns."""
    where = warehouse_db.describe(dsn)
    with err.status(f"Running the pipeline as of {when} on the {where}"):
        result = postgres_run.run(dsn, home, policy, when)
    _line(f"As of {when} (run {result.run_id[:8]}) on the {where}:", indent="")
    for name, ingested in result.ingested.items():
        _line(
            f"ingest {name}: read {ingested.rows_read:,}, loaded {ingested.rows_loaded:,},"
            f" quarantined {ingested.rows_quarantined:,}, loaded from quarantine"
            f" {ingested.rows_retried:,}, waiting {ingested.rows_waiting:,}"
            + (f" ({ingested.note})" if ingested.note else "")
        )
    enforced, answers = result.enforced, result.answers
    assert enforced is not None and answers is not None
    # Access and portability are carried out by their answers, the rest at intake.
    carried = Counter(result.requests) + Counter(answers.exported)
    done = ", ".join(f"{kind} {carried[kind]:,}" for kind in REQUEST_TYPES if carried[kind])
    _line(f"requests carried out: {done or 'none'}")
    for name, counts in enforced.counts.items():
        done = ", ".join(f"{action} {n:,}" for action, n in sorted(counts.items())) or "nothing"
        _line(f"enforce {name}: {done}")
    if result.sources:
        _print_sources(result.sources, "")
    _line(f"answers: {answers.exports} exports written, {answers.erasures} erasures answered")
    for name, (released, check) in result.releases.items():
        _line(f"analytics {name}: {released.rows:,} rows (k = {released.k});")
        _line(
            f"{released.suppressed:,} of {released.records:,} records suppressed"
            f" in {released.suppressed_cells:,} cells",
            indent="    ",
        )
        if not check.passed:
            err.print(
                f"[yellow]check failed:[/] analytics/{name} k_anonymity: {check.describe()}",
                highlight=False,
                soft_wrap=True,
            )
    _report_processors(result)
    logs, made = result.logs, result.backup
    assert logs is not None and made is not None
    _line(
        f"logs: {logs.access_log} access and {logs.export_log} export entries,"
        f" {logs.quarantine} quarantined rows past retention deleted"
    )
    _line(f"backup {made.id} written; {len(result.expired_backups)} past retention deleted")
    if result.consent_health is not None and "html" in result.record:
        asked = sum(result.consent_health.counts.values())
        _line(
            f"compliance: record of processing {result.record['html'].name},"
            f" re-consent list {asked:,} rows"
        )
    _line(
        f"ledger: {enforced.ledger_entries} entries; vault: {enforced.forgotten_tokens}"
        " unused tokens forgotten"
    )
    _line(f"not run on PostgreSQL yet: {warehouse_db.NOT_BUILT}")
    if result.refused:
        _fail("; ".join(result.refused.values()))


def _line(text: str, indent: str = "  ") -> None:
    """One item of the PostgreSQL run summary, wrapped to 80 columns at spaces (its
    continuation lines indented further), as the DuckDB summary's tables fit them."""
    for line in textwrap.wrap(
        text,
        80,
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_long_words=False,
        break_on_hyphens=False,
    ):
        out.print(line, highlight=False, markup=False)


def _report_processors(result: postgres_run.RunResult) -> None:
    """The run's processor review, and the checks the DuckDB pipeline's processors and
    breaches assets make (refused exports to assess, overdue notifications)."""
    report = result.processors
    assert report is not None
    _line(
        f"processors: {sum(a.allowed for a in report.access)} of {len(report.access)} with"
        f" access; {report.expired_exports} export files deleted"
    )
    for r in report.open_refusals:
        err.print(
            "[yellow]check failed:[/] compliance/processors no_unassessed_refused_export:"
            f" {r.processor}: export refused {r.at:%Y-%m-%d %H:%M} UTC ({r.reason}),"
            f" breach {r.breach_id} to assess",
            highlight=False,
            soft_wrap=True,
        )
    for b, late in result.overdue_breaches:
        err.print(
            "[yellow]check failed:[/] compliance/breaches no_overdue_breach_notification:"
            f" {b.breach_id}: {', '.join(late)}",
            highlight=False,
            soft_wrap=True,
        )


def _run_and_report(
    home: Home, when: dt.date, policy: Path | None, shards: list[str] | None = None
) -> None:
    from pipelines.launch import run_pipeline
    from pipelines.sharded import ShardRun, run_sharded

    def finished(run: ShardRun) -> None:
        """One line per shard as it finishes (names, times and sizes only)."""
        how = "done" if run.success else "[red]failed[/]"
        memory = f", peak memory {run.peak_bytes / 2**20:,.0f} MiB" if run.peak_bytes else ""
        err.print(f"shard {run.shard} {how} in {run.seconds:.1f} s{memory}", highlight=False)

    # The summary is read under the same lock: a run waiting for it would otherwise find
    # the warehouse open here.
    with exclusive(home.lock):
        if not shards:
            moved = reshard(home, load_policy(policy), shard_count(), when)
            if moved:
                err.print(
                    f"re-sharded from {moved.before} to {moved.after} shards:"
                    f" {sum(moved.rows.values()):,} rows written; earlier ledgers in"
                    f" {moved.ledgers}",
                    highlight=False,
                )
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            progress.add_task(f"Running the pipeline as of {when}", total=None)
            path = str(policy) if policy else None
            if shard_count() > 1:
                outcome = run_sharded(home, when, path, only=shards, progress=finished)
            else:
                outcome = run_pipeline(home, when, path)
        loaded = load_policy(policy)
        con = connect(home.warehouse, read_only=True)
        try:
            summaries = summarize(con, loaded, outcome.run_id)
        finally:
            con.close()
    _print_summary(loaded, summaries, when, outcome.run_id)
    for check in outcome.failed_checks:
        err.print(f"[yellow]check failed:[/] {check}", highlight=False, soft_wrap=True)
    if outcome.errors or (not outcome.success and not outcome.blocking):
        _fail("; ".join(outcome.errors) or f"run {outcome.run_id} failed")
    if outcome.blocking:
        _fail(
            f"{len(outcome.blocking)} blocking checks failed: the analytics, exports and backups"
            " after them were not produced",
            PROBLEM,
        )


def _table(title: str, *columns: str, texts: int = 1, caption: str | None = None) -> Table:
    """A summary table that fits 80 columns: light rules, the first `texts` columns
    left-aligned, the others (counts) right-aligned; headers wrap at spaces."""
    table = Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        title_justify="left",
        caption_justify="left",
    )
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < texts else "right")
    return table


def _print_summary(
    policy: Policy, summaries: list[TableSummary], when: dt.date, run_id: str
) -> None:
    """What a run left and did, in tables that fit 80 columns: rows per state, what this
    run did (the counts the enforcement asset shows), rows per purpose and per legal basis."""
    states = [str(state) for state in STORED_STATES]
    title = f"Lethe warehouse as of {when} (run {run_id[:8]}): rows per state"
    table = _table(title, "table", "rows", *states)
    for s in summaries:
        table.add_row(s.table, f"{s.rows:,}", *(f"{s.by_state.get(x, 0):,}" for x in states))
    out.print(table, "")
    for label, counts in (
        ("Held (litigation hold)", {s.table: s.held for s in summaries}),
        ("Past retention", {s.table: s.past_retention for s in summaries}),
    ):
        listed = ", ".join(f"{t} {n:,}" for t, n in counts.items() if n) or "none"
        out.print(f"{label}: {listed}", highlight=False)
    labels = [label.replace("_", " ") for label in RUN_ACTIONS.values()]
    done = _table("Done by this run (rows)", "table", *labels)
    for s in summaries:
        done.add_row(s.table, *(f"{s.actions.get(a, 0):,}" for a in RUN_ACTIONS))
    out.print("", done, "")
    purposes = _table(
        "Rows kept per purpose",
        *("purpose", "legal basis", "table", "rows"),
        texts=3,
        caption="A row kept for several purposes counts under each.",
    )
    previous = None
    for name, basis, name_of_table, n in purpose_rows(policy, summaries):
        first = name != previous
        purposes.add_row(name if first else "", basis if first else "", name_of_table, f"{n:,}")
        previous = name
    out.print(purposes, "")
    bases = _table("Rows kept per legal basis", "legal basis", "table", "rows", texts=2)
    previous = None
    for basis, name_of_table, n in legal_basis_rows(policy, summaries):
        article = LEGAL_BASIS_ARTICLE[basis] if basis != previous else ""
        bases.add_row(article, name_of_table, f"{n:,}")
        previous = basis
    out.print(bases)


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
        _fail("choose a format: --fides", USAGE)
    text = fides_yaml(_schema(file), key)
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text, encoding="utf-8")
    out.print(f"{output}: Fides dataset {key!r} written", highlight=False)


def _home_with_warehouse() -> Home:
    """LETHE_HOME, refused in one line (creating nothing) when it holds no warehouse yet
    or other shards than LETHE_SHARDS says."""
    home = Home.from_env()
    check_layout(home, shard_count())
    if not home.warehouse.exists():
        if os.environ.get("LETHE_HOME"):
            _fail(f"no Lethe warehouse in LETHE_HOME {home.root} (run `lethe run` first)")
        _fail(
            f"no Lethe warehouse here: LETHE_HOME is not set and {home.root} has none"
            " (run `lethe run` first, or set LETHE_HOME)"
        )
    return home


def _subject_home(subject: str) -> Home:
    """LETHE_HOME, or with subject shards the shard that holds the subject."""
    home = _home_with_warehouse()
    n = shard_count()
    return home if n == 1 else subject_shard(home, load_policy().data_schema, subject, n)


def _unsharded(command: str) -> None:
    """Refuse a command that would act on the top warehouse, which with subject shards only
    holds their union (each shard's run writes its own backups)."""
    if shard_count() > 1:
        _fail(f"lethe {command}: not built for subject shards yet (LETHE_SHARDS={shard_count()})")


def _request_home(request_id: str) -> Home:
    """LETHE_HOME, or with subject shards the shard that holds the request."""
    home = _home_with_warehouse()
    n = shard_count()
    return home if n == 1 else request_shard(home, request_id, n)


@contextmanager
def _warehouse(write: bool = True, home: Home | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    home = home or _home_with_warehouse()
    with exclusive(home.lock, shared=not write):
        con = connect(home.warehouse, read_only=not write)
        try:
            yield con
        finally:
            con.close()


def _postgres_warehouse() -> str | None:
    """The PostgreSQL warehouse (LETHE_WAREHOUSE) a command acts on, or None (DuckDB);
    subject shards are not built there."""
    dsn = warehouse_db.dsn_from_env()
    if dsn and shard_count() > 1:
        warehouse_db.refuse_here(f"LETHE_SHARDS={shard_count()}")
    return dsn


@hold_app.command("add")
def hold_add(
    subject: Annotated[str, typer.Option(help="The subject's key or e-mail address.")],
    reason: Annotated[str, typer.Option(help="Why the data must be kept (the case).")],
) -> None:
    """Freeze every row of a data subject until the hold is released."""
    policy = load_policy()
    dsn = _postgres_warehouse()
    if dsn:
        with postgres_requests.opened(dsn, "placing the hold") as engine:
            hold_id = postgres_holds.place(engine, policy, subject, reason)
    else:
        with _warehouse(home=_subject_home(subject)) as con:
            hold_id = place_hold(con, policy, subject, reason)
    out.print(f"hold {hold_id} placed; the subject's rows are frozen from the next run")


@hold_app.command("release")
def hold_release(
    subject: Annotated[str, typer.Option(help="The subject's key or e-mail address.")],
    reason: Annotated[str, typer.Option(help="Why the hold ends.")],
) -> None:
    """Release a subject's open holds; retention applies again from the next run."""
    policy = load_policy()
    dsn = _postgres_warehouse()
    if dsn:
        with postgres_requests.opened(dsn, "releasing the hold") as engine:
            n = postgres_holds.release(engine, policy, subject, reason)
    else:
        with _warehouse(home=_subject_home(subject)) as con:
            n = release_hold(con, policy, subject, reason)
    out.print(f"{n} hold(s) released")


def _report_chain(name: str, result: VerifyResult) -> None:
    """One line for a verified ledger; a broken chain fails the command, naming the entry."""
    if not result.ok:
        _fail(f"{name}: {result.problem}")
    out.print(f"{name}: {result.entries} entries, chain intact")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit ledger's hash chain: any edited, removed or reordered entry fails.
    With subject shards, every shard's ledger and the top one (each its own chain), and
    the ledgers kept from before each re-shard."""
    dsn = warehouse_db.dsn_from_env()
    if dsn:
        engine = warehouse_db.open_engine(dsn)
        try:
            result = warehouse_db.verify(engine.con)
        finally:
            engine.close()
        _report_chain("audit ledger", result)
        return
    home = _home_with_warehouse()
    n = shard_count()
    shards = [s for s in shard_homes(home, n) if s.warehouse.exists()] if n > 1 else []
    for where in [home, *shards]:
        with _warehouse(write=False, home=where) as con:
            result = verify(con)
        name = "audit ledger" if where == home else f"audit ledger of shard {where.root.name}"
        _report_chain(name, result)
    # The ledgers of the layouts before each re-shard, kept read-only.
    for path in sorted(home.root.glob(f"{LEDGERS}/*/*.duckdb")):
        con = connect(path, read_only=True)
        try:
            result = verify(con)
        finally:
            con.close()
        _report_chain(f"archived audit ledger {path.parent.name}/{path.stem}", result)


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
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Record nothing; show per PostgreSQL source and table how many rows the"
            " request would change there, and how (erasure, rectification, restriction).",
        ),
    ] = False,
) -> None:
    """Record a data-subject request (deadline: one calendar month).

    The next run (or the request sensor) carries it out, at writable PostgreSQL sources too."""
    if kind not in (*REQUEST_TYPES, "extend"):
        _fail(f"TYPE: {kind!r} is not one of {' | '.join(REQUEST_TYPES)} | extend", USAGE)
    if request_id and kind != "extend":
        _fail(f"request {kind}: takes no request id (only `request extend ID` does)", USAGE)
    dsn = _postgres_warehouse()
    if kind == "extend":
        if not request_id:
            _fail("request extend: give the request id", USAGE)
        if dsn:
            with postgres_requests.opened(dsn, "extending the request") as engine:
                extended = postgres_requests.extend(engine, load_policy(), request_id, reason or "")
        else:
            with _warehouse(home=_request_home(request_id)) as con:
                extended = extend_request(con, request_id, reason or "")
        out.print(f"{extended.request_id}: deadline extended to {extended.deadline:%Y-%m-%d}")
        return
    if not subject:
        _fail("--subject: required (the subject's key or an e-mail address)", USAGE)
    schema = load_policy().data_schema
    changes = parse_changes(schema, set_ or []) if kind == "rectification" else None
    if set_ and kind != "rectification":
        _fail("--set applies to rectification requests only", USAGE)
    if dry_run and dsn:
        with postgres_requests.opened(dsn, "previewing the request") as engine:
            outcomes = postgres_propagation.preview(
                engine, load_policy(), kind, subject, changes, _date(None)
            )
    elif dry_run:
        policy = load_policy()
        target = _subject_home(subject)
        with _warehouse(home=target) as con:
            outcomes = preview_request(
                con, policy, target.vault, kind, subject, changes, _date(None)
            )
    if dry_run:
        _print_sources(outcomes, f"{kind} request (dry run: nothing recorded or changed)")
        return
    if dsn:
        with postgres_requests.opened(dsn, "recording the request") as engine:
            recorded = postgres_requests.record(
                engine, load_policy(), kind, subject, changes, reason
            )
    else:
        with _warehouse(home=_subject_home(subject)) as con:
            recorded = record_request(con, schema, kind, subject, changes, reason)
    out.print(
        f"{recorded.request_id}: {recorded.type} request recorded;"
        f" due by {recorded.deadline:%Y-%m-%d}",
        highlight=False,
    )
    answer = _NEXT_ANSWER.get(recorded.type, "shows it done")
    # No Dagster sensor watches a PostgreSQL warehouse (yet): only `lethe run` carries it out.
    when = (
        "`lethe run` carries it out"
        if dsn
        else "the next pipeline run carries it out (`lethe run` now, or the request sensor"
        " within a minute while Dagster runs, `make ui`)"
    )
    out.print(f"Next: {when}; then `lethe requests` {answer}.", highlight=False)


# What `lethe requests` shows once a request of each type is carried out.
_NEXT_ANSWER = {
    "access": "shows the path of its export (a zip under exports/requests/)",
    "portability": "shows the path of its export (a zip under exports/requests/)",
    "erasure": "shows it done and what is still kept, why",
    "objection": "shows it done and which purposes stopped",
}


@app.command()
def propagate(
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Change nothing; show what each source would get (rolled back)."
        ),
    ] = False,
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Policy file (default policies/default.yaml).")
    ] = None,
) -> None:
    """Carry pending erasures, rectifications and restrictions to writable PostgreSQL
    sources now (each run does it too): one transaction per source, recorded in the ledger.
    A source that refuses is rolled back and keeps its requests pending (exit 1)."""
    loaded = load_policy(policy)
    _unsharded("propagate")
    dsn = _postgres_warehouse()
    if dsn:
        with postgres_requests.opened(dsn, "carrying the changes to the sources") as engine:
            outcomes = postgres_propagation.propagate(
                engine, loaded, f"cli-{uuid.uuid4()}", _date(None), dry_run=dry_run
            )
    else:
        with _warehouse(write=True) as con:
            outcomes = propagate_changes(
                con, loaded, f"cli-{uuid.uuid4()}", _date(None), dry_run=dry_run
            )
    _print_sources(outcomes, "dry run: rolled back, nothing changed" if dry_run else "")
    refused = [o.reason for o in outcomes if not o.ok]
    if refused and not dry_run:
        _fail("; ".join(r for r in refused if r))


def _print_sources(outcomes: list[SourceOutcome], title: str) -> None:
    """Per source and table: rows planned, how, and rows the statements changed there."""
    if not outcomes:
        out.print(f"{title + ': ' if title else ''}no change for any PostgreSQL source")
        return
    table = Table(title=f"PostgreSQL sources{f' ({title})' if title else ''}")
    for col in ("source", "table", "action", "rows", "columns", "at the source"):
        table.add_column(col, justify="right" if col in ("rows", "at the source") else "left")
    for o in outcomes:
        for c in o.changes:
            verb = "deleted" if c.action == "delete" else "updated"
            table.add_row(
                f"${o.source}",
                c.source_table,
                c.action,
                f"{c.rows:,}",
                ", ".join(c.columns),
                "refused" if not o.ok else f"{c.at_source:,} {verb}",
            )
    out.print(table)
    for o in outcomes:
        # Where the source's own keys and constraints change what the plan does there.
        for name, notes in sorted((o.plan.notes if o.plan else {}).items()):
            for column, note in sorted(notes.items()):
                out.print(f"${o.source} {name}.{column}: {note}", highlight=False, soft_wrap=True)
        if not o.ok:
            err.print(f"[yellow]refused:[/] {o.reason}", highlight=False, soft_wrap=True)


@app.command("requests")
def list_requests_command(
    overdue: Annotated[bool, typer.Option("--overdue", help="Only overdue requests.")] = False,
) -> None:
    """List data-subject requests with status, deadline and answer.

    An answer is where the export file is, or what was done."""
    dsn = warehouse_db.dsn_from_env()
    rows = []
    if dsn:
        home = Home.from_env()
        with postgres_requests.opened(dsn, "listing the requests") as engine:
            rows = [(home, *r) for r in postgres_requests.listing(engine, overdue_only=overdue)]
    else:
        home = _home_with_warehouse()
        n = shard_count()
        for where in (
            [home] if n == 1 else [s for s in shard_homes(home, n) if s.warehouse.exists()]
        ):
            with _warehouse(write=False, home=where) as con:
                rows += [(where, *r) for r in list_requests(con, overdue_only=overdue)]
    rows.sort(key=lambda r: (r[4], r[1]))  # received, id: as one warehouse lists them
    if not rows:
        out.print("No overdue requests." if overdue else "No data-subject requests yet.")
        return
    columns = ("id", "type", "subject", "received", "deadline", "status")
    table = _table("Overdue requests" if overdue else "Data-subject requests", *columns, texts=6)
    table.columns[2].overflow = "fold"  # a long subject key wraps rather than being cut
    answers = []
    for where, rid, kind, subject_key, received, deadline, status, late, answer in rows:
        table.add_row(
            rid,
            kind,
            short(subject_key),  # a gone subject: its keyed hash, shortened
            f"{received:%Y-%m-%d}",
            f"{deadline:%Y-%m-%d}",
            "[red]overdue[/]" if late else status,
        )
        if answer:
            answers.append(f"{rid}  {_answer(home, where, answer)}")
    out.print(table)
    if answers:
        out.print()
        out.print("Answers (files under LETHE_HOME):", highlight=False)
        for line in answers:
            out.print(line, highlight=False)


def _answer(home: Home, where: Home, answer: dict) -> str:
    """Where an export is (relative to LETHE_HOME; under its shard's folder `where`), or
    what the answer says."""
    if "export" not in answer:
        return describe_answer(answer)
    path = export_dir(where) / answer["export"]
    gone = "" if path.exists() else " (deleted since: exports expire, erasure deletes them)"
    return f"{path.relative_to(home.root)}{gone}"


@app.command()
def backup() -> None:
    """Write a compressed backup of the warehouse under LETHE_HOME/backups."""
    dsn = _postgres_warehouse()
    if dsn:
        # As a run there does, this command also deletes the backups past retention.
        home, policy = Home.from_env().ensure(), load_policy()
        with exclusive(home.lock), postgres_requests.opened(dsn, "the backup") as engine:
            made = postgres_backup.backup(engine, home, policy)
            expired = expire_backups(home, policy.operations.backups)
        out.print(f"backup {made.id} written ({made.path})", highlight=False)
        if expired:
            out.print(f"{len(expired)} backup(s) past retention deleted", highlight=False)
        return
    _unsharded("backup")
    home = _home_with_warehouse().ensure()
    with exclusive(home.lock):
        made = create_backup(home)
    out.print(f"backup {made.id} written ({made.path})", highlight=False)


@app.command()
def restore(
    backup_id: Annotated[str, typer.Argument(help="Backup id, as listed under backups/.")],
    policy: Annotated[Path | None, typer.Option("--policy", help="Policy file.")] = None,
) -> None:
    """Restore a backup; every erasure recorded since is re-applied before it is visible."""
    _unsharded("restore")
    home = Home.from_env()
    loaded = load_policy(policy)
    if not home.backups.is_dir():
        _fail(f"no backups in {home.backups}: nothing to restore (is LETHE_HOME set?)")
    dsn = _postgres_warehouse()
    with exclusive(home.lock):
        if dsn:
            with postgres_requests.opened(dsn, "the restore") as engine:
                result = postgres_backup.restore(engine, home.ensure(), backup_id, loaded)
        else:
            result = restore_backup(home.ensure(), backup_id, loaded)
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
        _fail(f"{option}: {value!r} is not a time (use YYYY-MM-DDTHH:MM, UTC)", USAGE)
        raise
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@processor_app.command("list")
def processor_list(policy: PolicyOption = None) -> None:
    """List the policy's processors and whether they may receive exports now."""
    loaded = load_policy(policy)
    now = dt.datetime.now(dt.UTC)
    dsn = _postgres_warehouse()
    if dsn:
        with postgres_requests.opened(dsn, "listing the processors") as engine:
            accesses = postgres_processors.access(engine, loaded, now)
    else:
        with _warehouse(write=False) as con:
            accesses = processor_access(con, loaded, now)
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
    _unsharded("processor export")
    now, run_id = dt.datetime.now(dt.UTC), f"cli-{uuid.uuid4()}"
    dsn = _postgres_warehouse()
    if dsn:
        with postgres_requests.opened(dsn, "exporting to the processor") as engine:
            home = Home.from_env().ensure()
            made = postgres_processors.export(engine, home, loaded, name, now, run_id)
    else:
        with _warehouse() as con:
            home = Home.from_env().ensure()
            made = export_to_processor(con, home, loaded, name, now, run_id)
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
    now = dt.datetime.now(dt.UTC)
    dsn = _postgres_warehouse()
    if dsn:
        with postgres_requests.opened(dsn, "revoking the access") as engine:
            access = postgres_processors.revoke_access(engine, loaded, name, reason, now)
    else:
        with _warehouse() as con:
            access = revoke(con, loaded, name, reason, now)
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
    aware = _when(aware_at, "--aware-at") or now
    details = {
        "processor": processor,
        "processor_aware_at": _when(processor_aware_at, "--processor-aware-at"),
        "processor_notified_at": _when(processor_notified_at, "--processor-notified-at"),
        "subjects_affected": subjects,
    }
    dsn = _postgres_warehouse()
    if dsn:
        with postgres_requests.opened(dsn, "recording the breach") as engine:
            breach = postgres_processors.record(engine, loaded, description, aware, now, **details)
    else:
        with _warehouse() as con:
            breach = record_breach(con, loaded, description, aware, now, **details)
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
        _fail(f"--party: {party!r} is not authority or processor", USAGE)
    now = dt.datetime.now(dt.UTC)
    when = _when(at, "--at") or now
    dsn = _postgres_warehouse()
    if dsn:
        with postgres_requests.opened(dsn, "recording the notification") as engine:
            postgres_processors.notified(engine, load_policy(), breach_id, party, when, now)  # type: ignore[arg-type]
    else:
        with _warehouse() as con:
            mark_notified(con, breach_id, party, when, now)  # type: ignore[arg-type]
    out.print(f"{breach_id}: {party} notification recorded", highlight=False)


@breach_app.command("close")
def breach_close(
    breach_id: Annotated[str, typer.Argument(help="Breach id (B-...).")],
    reason: Annotated[str, typer.Option(help="Why it is unlikely to result in a risk.")],
) -> None:
    """Close a breach assessed as unlikely to result in a risk (no authority notification)."""
    now = dt.datetime.now(dt.UTC)
    dsn = _postgres_warehouse()
    if dsn:
        with postgres_requests.opened(dsn, "closing the breach") as engine:
            postgres_processors.close(engine, load_policy(), breach_id, reason, now)
    else:
        with _warehouse() as con:
            close_breach(con, breach_id, reason, now)
    out.print(f"{breach_id}: closed without notification; the assessment is recorded")


@breach_app.command("list")
def breach_list(
    overdue: Annotated[bool, typer.Option("--overdue", help="Only overdue breaches.")] = False,
) -> None:
    """List breach records with their deadlines."""
    now = dt.datetime.now(dt.UTC)
    dsn = _postgres_warehouse()
    if dsn:
        with postgres_requests.opened(dsn, "listing the breaches") as engine:
            register = postgres_processors.register(engine)
    else:
        with _warehouse(write=False) as con:
            register = list_breaches(con)
    title = "Overdue breaches" if overdue else "Breaches"
    table = _table(title, "id", "aware (UTC)", "authority deadline", "status", "source", texts=5)
    for column in table.columns[:4]:
        column.no_wrap = True  # ids and times whole; the source wraps into what is left
    for b in register:
        late = b.overdue(now)
        if overdue and not late:
            continue
        status = (
            "[red]overdue[/]" if late else ("open" if b.open or b.awaiting_processor else "done")
        )
        source = b.source.replace("_", " ") + (f", {b.processor}" if b.processor else "")
        table.add_row(
            b.breach_id,
            f"{b.aware_at:%Y-%m-%d %H:%M}",
            f"{b.authority_deadline:%Y-%m-%d %H:%M}",
            status,
            source,
        )
    out.print(table)


def main() -> None:
    """Console-script entry point: every failure is one line on stderr and an exit code as
    the README's "Exit codes" says.

    0 done; 1 refused by Lethe or a run with a problem (LetheError, `_fail`); 2 the
    command line itself is wrong (Click's usage errors, values of the wrong form);
    3 an unexpected failure, with its type and first line (LETHE_DEBUG=1 shows the
    traceback instead).
    """
    try:
        with owner_only_umask():
            code = app(standalone_mode=False)
    except typer.Abort:
        err.print("[bold red]error:[/] aborted", highlight=False)
        sys.exit(PROBLEM)
    except LetheError as exc:
        # Several problems (every error of a policy) are one line each.
        for line in str(exc).splitlines() or [""]:
            err.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        sys.exit(PROBLEM)
    except Exception as exc:
        if _usage_error(exc):
            sys.exit(USAGE)
        if os.environ.get("LETHE_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        if _disk_full(exc):
            err.print(
                f"[bold red]error:[/] No space left on device ({type(exc).__name__}: {first}):"
                " free space under LETHE_HOME and run again",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(PROBLEM)
        err.print(
            f"[bold red]error:[/] unexpected {type(exc).__name__}: {first}"
            " (set LETHE_DEBUG=1 for details)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(UNEXPECTED)
    sys.exit(code if isinstance(code, int) else 0)


# How a full disk shows through the OS, SQLite (Dagster's instance) and DuckDB.
_DISK_FULL = ("No space left on device", "database or disk is full", "File too large")


def _disk_full(exc: BaseException) -> bool:
    """A full disk (or file size limit) anywhere in the exception's chain: the machine's
    problem, not a bug."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG):
            return True
        if any(text in str(exc) for text in _DISK_FULL):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _usage_error(exc: Exception) -> bool:
    """Print a usage error of the command line (the Click errors Typer raises: no such
    option, a missing argument, a value of the wrong form) as one line; False for any
    other exception."""
    # Typer raises the errors of its own copy of Click, not importable as public names.
    if getattr(exc, "exit_code", None) != USAGE or not hasattr(exc, "format_message"):
        return False
    message = exc.format_message()
    if message:  # empty when no arguments were given: the help is already printed
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx else ""
        err.print(f"[bold red]error:[/] {message}{where}", highlight=False, soft_wrap=True)
    return True
