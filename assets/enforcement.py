"""Retention enforcement asset and the checks that prove it: nothing past retention,
held data subjects untouched, ledger chain intact."""

import dagster as dg

from assets.metadata import OWNERS, all_purposes_metadata, core_key
from lethe.compliance.inspection import held_rows_touched, rows_past_retention
from lethe.declaration.policy import Policy
from lethe.engine.audit import verify
from lethe.engine.enforcement import enforce
from pipelines.resources import PolicyResource, WarehouseResource

ENFORCEMENT = core_key("retention_enforcement")
PAST_RETENTION = "nothing_past_retention"
LEDGER_CHAIN = "ledger_chain_intact"


def holds_untouched(policy: Policy) -> str:
    """The name of the check that held subjects were left alone (`held_<subjects>_untouched`)."""
    return f"held_{policy.data_schema.subject_table.name}_untouched"


def enforcement_assets(policy: Policy) -> list[dg.AssetsDefinition]:
    """The enforcement asset, with its checks, for the policy's purposes and tables."""
    subjects = policy.data_schema.subject_table.name

    @dg.asset(
        key=ENFORCEMENT,
        group_name="enforcement",
        deps=[dg.AssetKey(["audit", "log_retention"])],
        owners=OWNERS,
        kinds={"duckdb", "sql"},
        metadata=all_purposes_metadata(policy),
        check_specs=[
            dg.AssetCheckSpec(
                PAST_RETENTION,
                asset=ENFORCEMENT,
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
                description="The audit ledger's hash chain verifies (no entry edited, removed or"
                " reordered).",
            ),
        ],
    )
    def retention_enforcement(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
    ):
        """Applies the retention policy as of the run's date, physically: values no purpose
        keeps are erased or generalized, values a purpose keeps only as a pseudonym are
        replaced by vault tokens, rows no purpose keeps are anonymized or deleted, and a held
        data subject's rows are left exactly as they are. The warehouse file is rewritten and
        swapped atomically, so no erased value survives in free blocks; every action batch is
        recorded in audit.ledger.
        """
        home = warehouse.paths()
        as_of = policy.as_of_date()
        loaded = policy.load()
        result = enforce(home, loaded, as_of, context.run.run_id)
        context.log.info(
            f"enforced as of {as_of}: {result.total('anonymize')} anonymized,"
            f" {result.total('pseudonymize')} pseudonymized, {result.total('delete')} deleted,"
            f" {result.total('retain')} rows with erased columns"
        )
        with warehouse.connect() as con:
            past = rows_past_retention(con, loaded)
            touched = held_rows_touched(con, loaded, context.run.run_id)
            chain = verify(con)
        yield dg.MaterializeResult(
            metadata={
                "as_of": str(as_of),
                "anonymized": result.total("anonymize"),
                "pseudonymized": result.total("pseudonymize"),
                "deleted": result.total("delete"),
                "rows_with_erased_columns": result.total("retain"),
                "per_table": result.counts,
                "ledger_entries": result.ledger_entries,
                "vault_entries_forgotten": result.forgotten_tokens,
            }
        )
        yield dg.AssetCheckResult(
            check_name=PAST_RETENTION,
            passed=sum(past.values()) == 0,
            description=", ".join(f"{t}: {n}" for t, n in past.items() if n) or "none",
            metadata={"rows_past_retention": past},
        )
        yield dg.AssetCheckResult(
            check_name=holds_untouched(loaded),
            passed=touched == 0,
            description=f"{touched} held rows touched" if touched else "no held row touched",
        )
        yield dg.AssetCheckResult(
            check_name=LEDGER_CHAIN,
            passed=chain.ok,
            description=chain.problem or f"{chain.entries} entries verify",
        )

    return [retention_enforcement]
