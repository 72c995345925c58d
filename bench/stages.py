"""One small function per benchmark stage: Lethe's stages and the baselines.

A stage function takes a `Context`, does its untimed set-up (copy fixtures, pick
subjects, read samples) and returns the zero-argument callable that is timed.
`bench.child` runs one stage per fresh process, so each stage's peak RSS is its own.

Stages whose core function has not landed yet name it in `requires`; the harness
imports that module and reports the stage as "not available" when the module or
the function is missing, without running it. Those stages import their function
inside the stage function for the same reason.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import shutil
import statistics
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa

from lethe.declaration.policy import Policy, load_policy
from lethe.declaration.schema import Column, Table
from lethe.declaration.strategies import Strategy, literal, quote
from lethe.engine.compaction import fsync
from lethe.engine.ddl import ensure_schemas
from lethe.engine.enforcement import enforce
from lethe.engine.ingest import ingest_table
from lethe.engine.tagging import tagged_tables
from lethe.engine.vault import attach
from lethe.engine.warehouse import connect
from lethe.eshop.generate import generate
from lethe.operations.home import Home

# Generator reference date and enforcement as-of date: fixed, so every run sees the same data.
REFERENCE = dt.date(2026, 1, 1)
NEXT_DAY = REFERENCE + dt.timedelta(days=1)  # the daily run's as-of date
SEED = 0
# One day's landing on top of the warehouse enforced as of REFERENCE.
DAILY_CHANGED = 0.002  # share of contacts and of orders delivered again, changed
DAILY_NEW = 0.0005  # share of contacts and of orders that are new
DAILY_WITHDRAWALS = 50  # consents withdrawn that day
DAILY_ERASURES = 20
ERASURE_BATCH = 10_000
EXPORT_SUBJECTS = 100
PER_SUBJECT_SAMPLE = 200
MASK_SAMPLE_CONTACTS = 20_000  # rows of contacts masked in Python; other tables pro rata
# The repository's default policy, whatever LETHE_POLICY says: runs must compare.
POLICY = Path(__file__).resolve().parent.parent / "policies" / "default.yaml"
# Fixtures shared by all repetitions of one scale (made by the first repetition).
LANDING = "landing"
INGESTED = "ingested.duckdb"  # the landing ingested and validated, not yet tagged
ENFORCED = "enforced"  # a LETHE_HOME whose warehouse is enforced as of REFERENCE


@dataclass(frozen=True)
class Context:
    """Where one repetition of one stage runs."""

    contacts: int
    fixtures: Path  # per scale: landing/, ingested.duckdb and enforced/
    work: Path  # this repetition's scratch directory, removed afterwards

    @property
    def landing(self) -> Path:
        return self.fixtures / LANDING

    @property
    def ingested(self) -> Path:
        return self.fixtures / INGESTED

    @property
    def enforced(self) -> Home:
        return Home(self.fixtures / ENFORCED)

    def home(self) -> Home:
        """A fresh LETHE_HOME inside the scratch directory."""
        return Home(self.work / "home").ensure()

    def home_with_ingested_warehouse(self) -> Home:
        """A fresh LETHE_HOME whose warehouse is a copy of the ingested fixture."""
        home = self.home()
        shutil.copyfile(self.ingested, home.warehouse)
        return home

    def home_with_enforced_warehouse(self) -> Home:
        """A fresh LETHE_HOME with copies of the enforced fixture's warehouse and vault."""
        home = self.home()
        shutil.copyfile(self.enforced.warehouse, home.warehouse)
        shutil.copyfile(self.enforced.vault, home.vault)
        return home


@dataclass
class StageResult:
    """What a timed run reports besides its wall time.

    `factor` scales the measured time (a sample extrapolated to the full size);
    `seconds` replaces it where the stage's figure is not the wall time of the run
    (the median over per-subject exports). `basis` says how either was derived.
    """

    factor: float = 1.0
    seconds: float | None = None
    basis: str = ""
    details: dict[str, Any] = field(default_factory=dict)


Timed = Callable[[], StageResult]


@dataclass(frozen=True)
class Stage:
    """A benchmark stage: its set-up-and-return-the-timed-callable function and metadata."""

    name: str
    title: str
    kind: Literal["lethe", "baseline"]
    prepare: Callable[[Context], Timed]
    requires: tuple[str, str] | None = None  # (module, function) that must exist
    produces: tuple[str, str] | None = None  # (path under work, fixture) kept from a run

    def missing(self) -> str | None:
        """Why the stage cannot run yet (its core function has not landed), or None."""
        if self.requires is None:
            return None
        module, function = self.requires
        if importlib.util.find_spec(module) is None:
            return f"{module} is not there yet"
        if not hasattr(importlib.import_module(module), function):
            return f"{module}.{function} is not there yet"
        return None


def erasure_batch(contacts: int) -> int:
    """Subjects erased in one batch: 10,000, or half the contacts at tiny scales."""
    return min(ERASURE_BATCH, max(1, contacts // 2))


def _sample_subjects(con: duckdb.DuckDBPyConnection, n: int) -> list[str]:
    """`n` contact ids in a fixed pseudo-random order (the same every run), of contacts
    not anonymized (whose ids still name someone)."""
    rows = con.execute(
        "SELECT contact_id FROM core.contacts WHERE _state <> 'anonymized'"
        " ORDER BY hash(contact_id || ?) LIMIT ?",
        [str(SEED), n],
    ).fetchall()
    return [r[0] for r in rows]


def subjects_from(path: Path, n: int) -> list[str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return _sample_subjects(con, n)
    finally:
        con.close()


# --- Lethe stages -------------------------------------------------------------------


def generate_stage(ctx: Context) -> Timed:
    """Synthetic landing data (`lethe.eshop.generate.generate`), written as Parquet."""
    landing = ctx.work / LANDING

    def run() -> StageResult:
        counts = generate(landing, ctx.contacts, seed=SEED, reference=REFERENCE)
        return StageResult(details={"rows": counts})

    return run


def ingest_stage(ctx: Context) -> Timed:
    """Ingest and validate every landing table into a new warehouse file (tags come with
    enforcement, in its one pass)."""
    home = ctx.home()
    shutil.copytree(ctx.landing, home.landing, dirs_exist_ok=True)
    policy = load_policy(POLICY)

    def run() -> StageResult:
        con = connect(home.warehouse)
        try:
            results = [
                ingest_table(con, home.landing, name, policy) for name in policy.data_schema.tables
            ]
        finally:
            con.close()
        return StageResult(
            details={
                "rows_loaded": {r.table: r.rows_loaded for r in results},
                "rows_quarantined": sum(r.rows_quarantined for r in results),
            }
        )

    return run


# The example shop declares the e-shop's tables column for column, under its own names,
# written as Czech exports are: `;`-separated windows-1250, decimal commas, d.m.Y H:M
# Prague times (examples/shop/shop.schema.yaml).
SHOP_POLICY = POLICY.parent.parent / "examples" / "shop" / "policy.yaml"


def _csv_value(column: Column, expr: str, table: Table, zone: str) -> str:
    """SQL writing one UTC Parquet value as the table's declared source writes it."""
    formats, dialect = table.source.formats, table.source.csv
    if column.type == "timestamp" and formats.timestamp:
        local = f"timezone({literal(zone)}, timezone('UTC', {expr}))"
        return f"strftime({local}, {literal(formats.timestamp)})"
    if column.type == "date" and formats.date:
        return f"strftime({expr}, {literal(formats.date)})"
    if column.type == "decimal" and dialect.decimal != ".":
        return f"replace(CAST({expr} AS VARCHAR), '.', {literal(dialect.decimal)})"
    return expr


def _write_csvs(landing: Path, target: Path, policy: Policy) -> None:
    """The Parquet landing files as CSV files the way `policy`'s schema declares them (its
    tables match the e-shop's column for column, in order)."""
    target.mkdir(parents=True, exist_ok=True)
    schema = policy.data_schema
    eshop = load_policy(POLICY).data_schema
    con = duckdb.connect()
    try:
        for mine, table in zip(eshop.tables.values(), schema.tables.values(), strict=True):
            source = landing / f"{mine.source.file}.parquet"
            if not source.exists():
                continue
            pairs = zip(mine.columns, table.columns, strict=True)
            columns = ", ".join(
                f"{_csv_value(c, quote(m.name), table, schema.timezone)} AS {quote(c.header)}"
                for m, c in pairs
            )
            dialect = table.source.csv
            utf8 = target / f"{table.source.file}.utf8"
            con.execute(
                f"COPY (SELECT {columns} FROM read_parquet(?)) TO '{utf8}'"
                f" (HEADER, DELIMITER {literal(dialect.delimiter)})",
                [str(source)],
            )
            with (
                utf8.open(encoding="utf-8", newline="") as src,
                (target / f"{table.source.file}.csv").open(
                    "w", encoding=dialect.encoding, newline=""
                ) as dst,
            ):
                shutil.copyfileobj(src, dst, 1 << 20)
            utf8.unlink()
    finally:
        con.close()


def _csv_ingest(ctx: Context, policy_file: Path) -> Timed:
    policy = load_policy(policy_file)
    home = ctx.home()
    _write_csvs(ctx.landing, home.landing, policy)

    def run() -> StageResult:
        con = connect(home.warehouse)
        try:
            results = [
                ingest_table(con, home.landing, name, policy) for name in policy.data_schema.tables
            ]
        finally:
            con.close()
        return StageResult(
            details={
                "rows_loaded": sum(r.rows_loaded for r in results),
                "rows_quarantined": sum(r.rows_quarantined for r in results),
            }
        )

    return run


def csv_plain_stage(ctx: Context) -> Timed:
    """Ingest + validate of the landing data as plain comma-separated UTF-8 CSV files."""
    return _csv_ingest(ctx, POLICY)


def csv_declared_stage(ctx: Context) -> Timed:
    """Ingest + validate of the same rows as the example shop's declared exports."""
    return _csv_ingest(ctx, SHOP_POLICY)


def enforce_stage(ctx: Context) -> Timed:
    """Tagging and retention enforcement in one pass on the ingested warehouse, including
    the physical file rewrite (the first run after the first load)."""
    home = ctx.home_with_ingested_warehouse()
    policy = load_policy(POLICY)

    def run() -> StageResult:
        result = enforce(home, policy, REFERENCE, run_id="bench")
        contacts = result.counts.get("contacts", {})
        return StageResult(
            details={
                "counts": result.counts,
                "ledger_entries": result.ledger_entries,
                # Contacts anonymized or with erased columns: the subjects a per-subject
                # platform would have to visit to do the same retention run.
                "subjects_changed": contacts.get("anonymize", 0) + contacts.get("retain", 0),
            }
        )

    return run


def record_requests(home: Home, kind: str, subjects: list[str], day: dt.date = REFERENCE) -> list:
    """Pending requests for `subjects`, inserted set-based (set-up, not timed)."""
    from lethe.rights.requests import deadline_for, pending_requests

    now = dt.datetime(day.year, day.month, day.day)
    con = connect(home.warehouse)
    try:
        ensure_schemas(con)
        con.execute(
            "INSERT INTO requests.requests (request_id, type, subject_key, received_at,"
            " deadline, status) SELECT 'R-' || lower(lpad(to_hex(i), 12, '0')), ?, s, ?, ?,"
            " 'pending' FROM (SELECT unnest(?) AS s, unnest(range(len(?))) AS i)",
            [kind, now, deadline_for(now), subjects, subjects],
        )
        return pending_requests(con, kind)
    finally:
        con.close()


def access_export_stage(ctx: Context) -> Timed:
    """Access export of one subject; the figure is the median over 100 random subjects."""
    from lethe.rights.exports import build_documents, write_export

    home = ctx.home_with_enforced_warehouse()
    policy = load_policy(POLICY)
    requests = record_requests(
        home, "access", subjects_from(home.warehouse, min(EXPORT_SUBJECTS, ctx.contacts))
    )

    def run() -> StageResult:
        timings = []
        con = connect(home.warehouse)
        attach(con, home.vault)
        try:
            for request in requests:
                start = time.perf_counter()
                now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
                doc = build_documents(con, policy, [request], now)[request.request_id]
                write_export(home, policy, doc)
                timings.append(time.perf_counter() - start)
        finally:
            con.close()
        return StageResult(
            seconds=statistics.median(timings),
            basis=f"median over {len(requests)} subjects (warm warehouse)",
            details={"max_s": max(timings)},
        )

    return run


def erasure_stage(ctx: Context) -> Timed:
    """Erasure of a batch of 10,000 subjects in one run: intake, enforcement, answers.

    The warehouse is enforced as of the same day already, as the daily run leaves it, so
    the timed run does the erasures and not a first retention run besides.
    """
    from lethe.rights.answers import answer_pending
    from lethe.rights.requests import apply_pending

    home = ctx.home_with_enforced_warehouse()
    policy = load_policy(POLICY)
    subjects = subjects_from(home.warehouse, erasure_batch(ctx.contacts))
    record_requests(home, "erasure", subjects)

    def run() -> StageResult:
        con = connect(home.warehouse)
        try:
            apply_pending(con, policy, REFERENCE, "bench", vault=home.vault)
        finally:
            con.close()
        enforce(home, policy, REFERENCE, "bench")
        con = connect(home.warehouse)
        try:
            answer_pending(con, home, policy, REFERENCE, "bench")
        finally:
            con.close()
        return StageResult(details={"subjects": len(subjects)})

    return run


def analytics_stage(ctx: Context) -> Timed:
    """The analysts' anonymized datasets, with their k-anonymity check."""
    from lethe.compliance.analytics import check_k_anonymity, datasets, release

    home = ctx.home_with_enforced_warehouse()
    policy = load_policy(POLICY)

    def run() -> StageResult:
        con = connect(home.warehouse)
        try:
            for dataset in datasets(policy).values():
                release(con, home, policy, dataset)
                check_k_anonymity(con, dataset, policy.k_anonymity)
        finally:
            con.close()
        return StageResult()

    return run


def _share(con: duckdb.DuckDBPyConnection, table: str, share: float) -> int:
    """How many rows a share of the warehouse's `core.<table>` stands for."""
    n = con.execute(f"SELECT count(*) FROM w.core.{table}").fetchone()[0]
    return max(1, round(n * share)) if n else 0


def _write_day_of_changes(landing: Path, warehouse: Path, target: Path) -> dict[str, int]:
    """One day's landing files: contacts and orders delivered again with a change, new
    ones, and withdrawn consents; only rows the enforced warehouse still holds as active
    (their subject active too) are delivered again. Set-up, not timed."""
    target.mkdir(parents=True, exist_ok=True)
    during = f"TIMESTAMP '{REFERENCE.isoformat()} 12:00:00'"  # the day's changes, as of NEXT_DAY
    con = duckdb.connect()
    counts: dict[str, int] = {}
    try:
        con.execute("ATTACH ? AS w (READ_ONLY)", [str(warehouse)])
        active = "SELECT contact_id FROM w.core.contacts WHERE _state = 'active'"
        live_orders = (
            "SELECT order_id FROM w.core.orders WHERE _state = 'active'"
            f" AND contact_id IN ({active})"
        )
        picks = {
            "contacts": [
                (
                    f"* REPLACE ({during} AS last_active_at)",
                    f"contact_id IN ({active})",
                    DAILY_CHANGED,
                    "changed",
                ),
                (
                    f"* REPLACE ('N' || contact_id AS contact_id, 'n' || email AS email,"
                    f" {during} AS created_at, {during} AS last_active_at)",
                    "true",
                    DAILY_NEW,
                    "new",
                ),
            ],
            "orders": [
                (
                    f"* REPLACE (coalesce(completed_at, {during}) AS completed_at)",
                    f"order_id IN ({live_orders})",
                    DAILY_CHANGED,
                    "changed",
                ),
                (
                    f"* REPLACE ('N' || order_id AS order_id, {during} AS ordered_at,"
                    " NULL AS completed_at)",
                    f"contact_id IN ({active})",
                    DAILY_NEW,
                    "new",
                ),
            ],
            "consents": [
                (
                    f"* REPLACE ({during} AS withdrawn_at)",
                    f"withdrawn_at IS NULL AND consent_id IN (SELECT consent_id FROM"
                    f" w.core.consents WHERE _state = 'active' AND contact_id IN ({active}))",
                    None,
                    "withdrawn",
                ),
            ],
        }
        for table, parts in picks.items():
            selects = []
            for columns, where, share, salt in parts:
                n = DAILY_WITHDRAWALS if share is None else _share(con, table, share)
                selects.append(
                    f"(SELECT {columns} FROM read_parquet({literal(str(landing / table))}"
                    f" || '.parquet') WHERE {where} ORDER BY hash({table[:-1]}_id || '{salt}')"
                    f" LIMIT {n})"
                )
            out = target / f"{table}.parquet"
            con.execute(f"COPY ({' UNION ALL '.join(selects)}) TO '{out}' (FORMAT parquet)")
            counts[table] = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
    finally:
        con.close()
    return counts


def daily_stage(ctx: Context) -> Timed:
    """The daily run on a warehouse enforced as of REFERENCE: ingest one day's landing,
    take in 20 erasure requests, tag and enforce as of the next day (one rewrite), answer."""
    from lethe.rights.answers import answer_pending
    from lethe.rights.requests import apply_pending

    home = ctx.home_with_enforced_warehouse()
    policy = load_policy(POLICY)
    delivered = _write_day_of_changes(ctx.landing, home.warehouse, home.landing)
    record_requests(home, "erasure", subjects_from(home.warehouse, DAILY_ERASURES), NEXT_DAY)

    def run() -> StageResult:
        con = connect(home.warehouse, defer_checkpoint=True)  # as the run's steps do
        try:
            ingested = [ingest_table(con, home.landing, name, policy) for name in delivered]
            apply_pending(con, policy, NEXT_DAY, "bench", vault=home.vault)
        finally:
            con.close()
        result = enforce(home, policy, NEXT_DAY, "bench")
        con = connect(home.warehouse)
        try:
            answer_pending(con, home, policy, NEXT_DAY, "bench")
        finally:
            con.close()
        return StageResult(
            details={
                "delivered": delivered,
                "rows_quarantined": sum(r.rows_quarantined for r in ingested),
                "counts": result.counts,
                "erasures": DAILY_ERASURES,
            }
        )

    return run


# --- Baselines ------------------------------------------------------------------------


def floor_stage(ctx: Context) -> Timed:
    """Plain CREATE TABLE AS SELECT of the four tagged tables into a fresh file, fsynced.

    The same file-level rewrite enforcement does, without any policy logic: what
    enforcement cannot beat by much. It copies the enforced warehouse, so it writes the
    same tags enforcement writes.
    """
    source, target = ctx.work / "source.duckdb", ctx.work / "floor.duckdb"
    # Read a private copy, as enforcement does, so both start from the same cache state.
    shutil.copyfile(ctx.enforced.warehouse, source)
    tables = tagged_tables(load_policy(POLICY))

    def run() -> StageResult:
        con = duckdb.connect(str(source))
        try:
            _rewrite_into(con, target, tables)
        finally:
            con.close()
        fsync(target)
        return StageResult(details={"bytes": target.stat().st_size})

    return run


def _rewrite_into(con: duckdb.DuckDBPyConnection, target: Path, tables: Iterable[str]) -> None:
    """The floor's write: every core table copied by a plain CTAS into a fresh file."""
    con.execute("ATTACH ? AS fresh", [str(target)])
    con.execute("CREATE SCHEMA fresh.core")
    for table in tables:
        con.execute(f"CREATE TABLE fresh.core.{table} AS SELECT * FROM core.{table}")
    con.execute("CHECKPOINT fresh")
    con.execute("DETACH fresh")


def load_rewrite_stage(ctx: Context) -> Timed:
    """A plain DuckDB load of the full landing into a fresh file, then one CTAS rewrite of
    it into another: two full writes, where a daily run needs one."""
    loaded, rewritten = ctx.work / "loaded.duckdb", ctx.work / "rewritten.duckdb"
    tables = tagged_tables(load_policy(POLICY))

    def run() -> StageResult:
        con = duckdb.connect(str(loaded))
        try:
            con.execute("CREATE SCHEMA core")
            for table in tables:
                source = str(ctx.landing / f"{table}.parquet")
                con.execute(f"CREATE TABLE core.{table} AS SELECT * FROM read_parquet(?)", [source])
            con.execute("CHECKPOINT")
            _rewrite_into(con, rewritten, tables)
        finally:
            con.close()
        fsync(loaded)
        fsync(rewritten)
        return StageResult()

    return run


# One erasure the way request-driven privacy platforms run it: per subject, one
# statement per table, each in its own transaction.
PER_SUBJECT_SQL = (
    "DELETE FROM core.shipments WHERE order_id IN"
    " (SELECT order_id FROM core.orders WHERE contact_id = ?)",
    "DELETE FROM core.consents WHERE contact_id = ?",
    "UPDATE core.orders SET billing_name = NULL, billing_street = NULL, billing_city = NULL,"
    " billing_postal_code = NULL, _state = 'restricted' WHERE contact_id = ?",
    "UPDATE core.contacts SET email = NULL, phone = NULL, first_name = NULL, last_name = NULL,"
    " street = NULL, city = NULL, birth_date = NULL, _state = 'anonymized'"
    " WHERE contact_id = ?",
)
# The lookups those statements make, indexed as an operational database would have them.
PER_SUBJECT_INDEXES = (
    ("contacts", "contact_id"),
    ("consents", "contact_id"),
    ("orders", "contact_id"),
    ("shipments", "order_id"),
)


def per_subject_stage(ctx: Context) -> Timed:
    """Per-subject erasure on a sample of subjects, extrapolated linearly to the batch."""
    path = ctx.work / "per_subject.duckdb"
    shutil.copyfile(ctx.enforced.warehouse, path)
    con = duckdb.connect(str(path))
    for table, column in PER_SUBJECT_INDEXES:
        con.execute(f"CREATE INDEX bench_{table}_{column} ON core.{table} ({column})")
    subjects = _sample_subjects(con, min(PER_SUBJECT_SAMPLE, ctx.contacts))
    batch = erasure_batch(ctx.contacts)

    def run() -> StageResult:
        for subject in subjects:
            for sql in PER_SUBJECT_SQL:
                con.execute("BEGIN TRANSACTION")
                con.execute(sql, [subject])
                con.execute("COMMIT")
        # The connection is left open: its final checkpoint at process exit is not
        # per-subject work and must not be multiplied by the extrapolation.
        return StageResult(
            factor=batch / len(subjects),
            basis=f"{len(subjects)} subjects timed, x{batch / len(subjects):g} for {batch:,}",
            details={"sample": len(subjects), "batch": batch},
        )

    return run


def _operator(strategy: Strategy) -> Callable[[Any], Any]:
    """The per-cell Python function a row-wise anonymizer applies for a strategy."""
    if strategy.name == "erase":
        return lambda v: None
    if strategy.name == "surrogate":
        return lambda v: "anon-" + uuid.uuid4().hex
    if strategy.name == "prefix":
        n = strategy.length
        return lambda v: None if v is None else v[:n]
    if strategy.name == "truncate":
        if strategy.to == "year":
            return lambda v: None if v is None else v.replace(month=1, day=1)
        return lambda v: None if v is None else v.replace(day=1)
    return lambda v: v


MASKED_TABLES = ("contacts", "orders")  # the tables whose rows are anonymized cell by cell


def python_mask_stage(ctx: Context) -> Timed:
    """Row-wise masking in Python, one function call per cell, on a sample; extrapolated.

    Every sampled row of contacts and orders gets the policy's anonymization rules, as a
    structured PII anonymizer applies an operator per column: the rows go from Arrow to
    Python objects, are masked cell by cell, and are written back into a DuckDB file.
    Each step is linear in the rows, so the sample extrapolates by row count. Choosing
    the sample (a scan of the whole table) is set-up and not timed.
    """
    policy = load_policy(POLICY)
    fraction = min(1.0, MASK_SAMPLE_CONTACTS / max(ctx.contacts, 1))
    con = duckdb.connect(str(ctx.enforced.warehouse), read_only=True)
    samples: list[tuple[str, pa.Table, dict[str, Callable[[Any], Any]]]] = []
    total = 0
    try:
        for table in MASKED_TABLES:
            spec = policy.data_schema.tables[table]
            rows_in_table = con.execute(f"SELECT count(*) FROM core.{table}").fetchone()[0]
            sample = con.execute(
                f"SELECT {', '.join(spec.column_names)} FROM core.{table}"
                f" ORDER BY hash({spec.key}) LIMIT ?",
                [max(1, round(rows_in_table * fraction))],
            ).to_arrow_table()
            rules = policy.when_unkept[table].anonymized_rules()
            operators = {c: _operator(rules.for_column(c)) for c in spec.column_names}
            samples.append((table, sample, operators))
            total += rows_in_table
    finally:
        con.close()
    sampled = sum(sample.num_rows for _, sample, _ in samples)
    out = duckdb.connect(str(ctx.work / "masked.duckdb"))

    def run() -> StageResult:
        for table, sample, operators in samples:
            masked = [{c: operators[c](v) for c, v in row.items()} for row in sample.to_pylist()]
            out.register("masked", pa.Table.from_pylist(masked, schema=sample.schema))
            out.execute(f"CREATE TABLE {table} AS SELECT * FROM masked")
            out.unregister("masked")
        return StageResult(
            factor=total / max(sampled, 1),
            basis=f"{sampled:,} of {total:,} rows timed, extrapolated by row count",
            details={"rows_sampled": sampled, "rows_total": total},
        )

    return run


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("generate", "generate", "lethe", generate_stage, produces=(LANDING, LANDING)),
        Stage(
            "ingest",
            "ingest + validate",
            "lethe",
            ingest_stage,
            produces=("home/warehouse.duckdb", INGESTED),
        ),
        Stage(
            "enforce",
            "retention enforcement",
            "lethe",
            enforce_stage,
            produces=("home", ENFORCED),
        ),
        # Right after enforcement: each round pairs the two runs in time.
        Stage("floor", "floor: CTAS rewrite", "baseline", floor_stage),
        Stage(
            "daily",
            "daily run",
            "lethe",
            daily_stage,
            requires=("lethe.rights.answers", "answer_pending"),
        ),
        Stage("load_rewrite", "plain load + rewrite", "baseline", load_rewrite_stage),
        Stage(
            "access_export",
            "access export (1 subject)",
            "lethe",
            access_export_stage,
            requires=("lethe.rights.exports", "build_documents"),
        ),
        Stage(
            "erasure",
            "erasure batch",
            "lethe",
            erasure_stage,
            requires=("lethe.rights.answers", "answer_pending"),
        ),
        Stage(
            "analytics",
            "analytics datasets + k-anonymity",
            "lethe",
            analytics_stage,
            requires=("lethe.compliance.analytics", "release"),
        ),
        Stage("csv_plain", "ingest of plain UTF-8 CSV", "baseline", csv_plain_stage),
        Stage("csv_declared", "ingest of declared-dialect CSV", "lethe", csv_declared_stage),
        Stage("per_subject", "per-subject erasure", "baseline", per_subject_stage),
        Stage("python_mask", "Python per-cell masking", "baseline", python_mask_stage),
    )
}
