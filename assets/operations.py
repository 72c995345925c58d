"""Retention of Lethe's own data: activity logs and backups."""

import datetime as dt

import dagster as dg

from assets.metadata import OWNERS, own_data_metadata
from lethe.declaration.policy import Policy
from lethe.operations import postgres_backup, postgres_logs
from lethe.operations.activity_logs import purge_logs
from lethe.operations.backup import create_backup, expire_backups, list_backups
from pipelines.resources import PolicyResource, WarehouseResource

BACKUPS_EXPIRED = "no_backup_past_retention"


def operations_assets(policy: Policy) -> list[dg.AssetsDefinition]:
    """Log retention and backups, described with the policy's operational retention."""
    ops = policy.operations

    @dg.asset(
        key=["audit", "log_retention"],
        group_name="enforcement",
        deps=[dg.AssetKey(["requests", "intake"])],
        owners=OWNERS,
        kinds={"duckdb"},
        metadata=own_data_metadata(policy, "logs"),
        description=(
            f"Deletes access-log entries older than the access-log retention ({ops.access_log})"
            f" and, every {ops.export_log.every}, export-log entries older than"
            f" {ops.export_log.keep} when the log holds more than {ops.export_log.purge_when_over};"
            f" deletes rejected input rows (core.quarantine) older than {ops.quarantine},"
            " recording each such purge in the audit ledger (table, columns, reason, row"
            " count). The enforcement rewrite that follows removes the deleted entries"
            " physically."
        ),
    )
    def log_retention(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
    ) -> dg.MaterializeResult:
        loaded, engine = policy.load(), warehouse.postgres()
        ops, now, run_id, as_of = (
            loaded.operations,
            dt.datetime.now(dt.UTC),
            context.run.run_id,
            policy.as_of_date(),
        )
        if engine is not None:
            purge = postgres_logs.purge(engine, loaded, now, run_id, as_of)
        else:
            with warehouse.connect(defer_checkpoint=True) as con:
                purge = purge_logs(con, loaded, now, run_id=run_id, as_of=as_of)
        context.log.info(f"access log: {purge.access_log} deleted; export log: {purge.export_log}")
        return dg.MaterializeResult(
            metadata={
                "access_log_deleted": purge.access_log,
                "export_log_deleted": purge.export_log,
                "export_log_purge_ran": purge.export_log_purged,
                "quarantine_rows_deleted": purge.quarantine,
                "access_log_retention": str(ops.access_log),
                "export_log_rule": f"every {ops.export_log.every}: entries older than"
                f" {ops.export_log.keep} once over {ops.export_log.purge_when_over}",
            }
        )

    @dg.asset(
        key=["backups", "warehouse_backup"],
        group_name="backups",
        deps=[dg.AssetKey(["requests", "answers"])],
        owners=OWNERS,
        kinds={"duckdb"},
        metadata=own_data_metadata(policy, "backups"),
        description=(
            "A compressed copy of the enforced warehouse under LETHE_HOME/backups, then deletion"
            f" of backups past the policy's retention ({ops.backups}). A restore re-applies every"
            " erasure recorded in the ledger since the backup before the data is visible."
        ),
        check_specs=[
            dg.AssetCheckSpec(
                BACKUPS_EXPIRED,
                asset=["backups", "warehouse_backup"],
                description="No backup older than the policy's backup retention"
                f" ({ops.backups}) remains.",
            )
        ],
    )
    def warehouse_backup(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
    ):
        home, loaded, engine = warehouse.paths(), policy.load(), warehouse.postgres()
        keep = loaded.operations.backups
        made = (
            create_backup(home) if engine is None else postgres_backup.backup(engine, home, loaded)
        )
        expired = expire_backups(home, keep)
        now = dt.datetime.now(dt.UTC)
        remaining = list_backups(home)
        too_old = [b.id for b in remaining if keep.add_to(b.created_at) <= now]
        context.log.info(f"backup {made.id} written; {len(expired)} expired")
        yield dg.MaterializeResult(
            metadata={
                "backup_id": made.id,
                "expired_backups": len(expired),
                "backups_kept": len(remaining),
                "retention": str(keep),
            }
        )
        yield dg.AssetCheckResult(
            check_name=BACKUPS_EXPIRED,
            passed=not too_old,
            description=", ".join(too_old) or "all backups within retention",
        )

    return [log_retention, warehouse_backup]
