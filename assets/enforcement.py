"""Retention enforcement and the core tables it leaves, with the checks that prove it:
nothing past retention (per table), held data subjects untouched, ledger chain intact.

One multi-asset: the enforcement run and every `core/<table>`, so a core table's latest
materialization is the table after the latest enforcement (its "last updated" is when
data was last erased), with its row count, rows per state and per-purpose counts.
"""

import dagster as dg

from assets.metadata import (
    OWNERS,
    all_purposes_metadata,
    core_key,
    ingest_key,
    status_metadata,
    table_metadata,
    table_tags,
)
from lethe.compliance.inspection import held_rows_touched, rows_past_retention
from lethe.compliance.summary import run_actions, run_totals
from lethe.compliance.table_status import EXPIRY_WINDOW, table_status
from lethe.declaration.policy import Policy
from lethe.engine import postgres_warehouse
from lethe.engine.audit import verify
from lethe.engine.enforcement import enforce
from lethe.engine.tagging import tagged_tables
from lethe.rights import postgres_holds
from pipelines.resources import PolicyResource, WarehouseResource

ENFORCEMENT = core_key("retention_enforcement")
PAST_RETENTION = "nothing_past_retention"
LEDGER_CHAIN = "ledger_chain_intact"
_ENFORCES = (
    "Applies the retention policy as of the run's date, physically: values no purpose keeps are"
    " erased or generalized, values a purpose keeps only as a pseudonym are replaced by vault "
    "tokens, rows no purpose keeps are anonymized or deleted, and a held data subject's rows "
    "are left exactly as they are."
)
ENFORCEMENT_DESCRIPTION = (
    f"{_ENFORCES} The warehouse file is rewritten and swapped atomically, so "
    "no erased value survives in free blocks; every action batch is recorded in audit.ledger."
)
# On a PostgreSQL warehouse (what the database still keeps for a while: README).
ENFORCEMENT_IN_POSTGRES = (
    f"{_ENFORCES} The tables whose rows change are rewritten in one transaction, then by"
    " VACUUM FULL, so no erased value survives in their files (the write-ahead log keeps it"
    " until its segments are recycled); every action batch is recorded in audit.ledger."
)


def holds_untouched(policy: Policy) -> str:
    """The name of the check that held subjects were left alone (`held_<subjects>_untouched`)."""
    return f"held_{policy.data_schema.subject_table.name}_untouched"


def enforcement_assets(policy: Policy, postgres: bool = False) -> list[dg.AssetsDefinition]:
    """The enforcement asset, with its checks, for the policy's purposes and tables (on a
    PostgreSQL warehouse with `postgres`: after the requests' intake)."""
    subjects = policy.data_schema.subject_table.name
    tables = list(policy.data_schema.tables)
    tagged = tagged_tables(policy)

    @dg.multi_asset(
        name="core__retention_enforcement",  # the step key of earlier runs
        specs=[
            dg.AssetSpec(
                ENFORCEMENT,
                group_name="enforcement",
                # After the requests' intake: through log retention, which PostgreSQL
                # warehouses do not run yet.
                deps=[
                    dg.AssetKey(["requests", "intake"] if postgres else ["audit", "log_retention"])
                ],
                owners=OWNERS,
                kinds={"duckdb", "sql"},
                metadata=all_purposes_metadata(policy),
                description=ENFORCEMENT_IN_POSTGRES if postgres else ENFORCEMENT_DESCRIPTION,
            ),
            *(_core_spec(policy, t) for t in tables),
        ],
        check_specs=[
            *(
                dg.AssetCheckSpec(
                    PAST_RETENTION,
                    asset=core_key(t),
                    blocking=True,
                    description=f"No row of core.{t} that no purpose keeps is still present"
                    " un-anonymized (blocks the analytics, exports and backups after it).",
                )
                for t in tagged
            ),
            dg.AssetCheckSpec(
                PAST_RETENTION,
                asset=ENFORCEMENT,
                blocking=True,
                description="No row that no purpose keeps is still present un-anonymized.",
            ),
            dg.AssetCheckSpec(
                holds_untouched(policy),
                asset=ENFORCEMENT,
                description=f"No ledger action of this run touched a row of a data subject"
                f" ({subjects}) under litigation hold.",
            ),
            dg.AssetCheckSpec(
                LEDGER_CHAIN,
                asset=ENFORCEMENT,
                blocking=True,
                description="The audit ledger's hash chain verifies (no entry edited, removed or"
                " reordered).",
            ),
        ],
    )
    def retention_enforcement(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
    ):
        """Enforces retention, then records every core table as it is now."""
        home, engine = warehouse.paths(), warehouse.postgres()
        as_of = policy.as_of_date()
        loaded = policy.load()
        if engine is not None:
            result = postgres_warehouse.enforce(engine, loaded, as_of, context.run.run_id)
        else:
            result = enforce(home, loaded, as_of, context.run.run_id)
        context.log.info(
            f"enforced as of {as_of}: {result.total('anonymize')} anonymized,"
            f" {result.total('pseudonymize')} pseudonymized, {result.total('delete')} deleted,"
            f" {result.total('retain')} rows with erased columns"
        )
        with warehouse.connect() as con:
            past = rows_past_retention(con, loaded)
            if engine is not None:
                touched = postgres_holds.held_rows_touched(engine, loaded, context.run.run_id)
                chain = postgres_warehouse.verify(engine.con)
            else:
                touched = held_rows_touched(con, loaded, context.run.run_id)
                chain = verify(con)
            statuses = [table_status(con, loaded, t, as_of) for t in tables]
            # Counted from the ledger by the same function as `lethe run`'s summary.
            totals = run_totals(con, context.run.run_id)
            per_table = run_actions(con, context.run.run_id)
        yield dg.MaterializeResult(
            asset_key=ENFORCEMENT,
            metadata={
                "as_of": str(as_of),
                **totals,
                "per_table": per_table,
                "ledger_entries": result.ledger_entries,
                "vault_entries_forgotten": result.forgotten_tokens,
            },
        )
        for status in statuses:
            yield dg.MaterializeResult(
                asset_key=core_key(status.table),
                metadata={**status_metadata(loaded, status), "as_of": str(as_of)},
            )
        for t in tagged:
            yield dg.AssetCheckResult(
                asset_key=core_key(t),
                check_name=PAST_RETENTION,
                passed=past.get(t, 0) == 0,
                description=f"{past.get(t, 0)} rows past retention" if past.get(t) else "none",
                metadata={"rows_past_retention": past.get(t, 0)},
            )
        yield dg.AssetCheckResult(
            asset_key=ENFORCEMENT,
            check_name=PAST_RETENTION,
            passed=sum(past.values()) == 0,
            description=", ".join(f"{t}: {n}" for t, n in past.items() if n) or "none",
            metadata={"rows_past_retention": past},
        )
        yield dg.AssetCheckResult(
            asset_key=ENFORCEMENT,
            check_name=holds_untouched(loaded),
            passed=touched == 0,
            description=f"{touched} held rows touched" if touched else "no held row touched",
        )
        yield dg.AssetCheckResult(
            asset_key=ENFORCEMENT,
            check_name=LEDGER_CHAIN,
            passed=chain.ok,
            description=chain.problem or f"{chain.entries} entries verify",
        )

    return [retention_enforcement]


def _core_spec(policy: Policy, table: str) -> dg.AssetSpec:
    """A core table as enforcement leaves it, described by its compliance facts."""
    declared = policy.data_schema.tables[table]
    return dg.AssetSpec(
        core_key(table),
        group_name="core",
        # After enforcement in the lineage too: the graph shows the stages in run order.
        deps=[ingest_key(table), ENFORCEMENT],
        owners=OWNERS,
        kinds={"duckdb"},
        description=f"core.{table}: {declared.description} As the latest enforcement left it:"
        " its row count, rows per state and, per purpose, the rows kept now, those expiring"
        f" within {EXPIRY_WINDOW.days} days and the next expiry date.",
        metadata=table_metadata(policy, table),
        tags=table_tags(policy, table),
    )
