"""The purpose-tagging asset: every core row's purposes, legal bases and retention.

Enforcement computes the tags in the statement that writes each enforced table, so a run
rewrites the warehouse once; this asset reports the tags that pass wrote (counts read from
the result) and tags on its own only when it runs without enforcement.
"""

import dagster as dg

from assets.enforcement import ENFORCEMENT
from assets.metadata import OWNERS, all_purposes_metadata, core_key, ingest_key
from lethe.compliance.catalog import retention_rules
from lethe.compliance.summary import summarize
from lethe.declaration.policy import LEGAL_BASIS_ARTICLE, Policy
from lethe.engine.tagging import tag_all, tagged_tables
from pipelines.resources import PolicyResource, WarehouseResource

TAGS_KEY = core_key("purpose_tags")


def tagging_assets(policy: Policy) -> list[dg.AssetsDefinition]:
    """The purpose-tagging asset of the policy's purposes and tables."""
    tables = tagged_tables(policy)

    @dg.asset(
        key=TAGS_KEY,
        group_name="tagging",
        deps=[
            *(ingest_key(t) for t in policy.data_schema.tables),
            dg.AssetKey(["requests", "intake"]),
            ENFORCEMENT,
        ],
        owners=OWNERS,
        kinds={"duckdb", "sql"},
        description=(
            f"Tags every row of {', '.join(f'core.{t}' for t in tables)} for the as-of date:"
            " `_purposes` (purposes that still keep the row), `_legal_bases`, `_retain_until`"
            " (when the last purpose ends; empty while open-ended) and `_state` (`expired` = no"
            " purpose keeps it). Enforcement writes them in its one rewrite of the warehouse;"
            " this step reports them, and tags on its own only in a run without enforcement."
        ),
        tags={f"purpose/{p}": "" for p in policy.all_purposes()},
        metadata={
            **all_purposes_metadata(policy),
            "purposes": dg.MetadataValue.md(
                "\n".join(
                    f"- **{p.name}** ({LEGAL_BASIS_ARTICLE[p.legal_basis]}): {p.description}"
                    for p in policy.all_purposes().values()
                )
            ),
            "retention_rules": dg.MetadataValue.json(
                {t: retention_rules(policy, t) for t in tables}
            ),
        },
    )
    def purpose_tags(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
    ) -> dg.MaterializeResult:
        as_of = policy.as_of_date()
        loaded = policy.load()
        with warehouse.connect() as con:
            if not _enforced_in(context):
                tag_all(con, loaded, as_of)
            summaries = summarize(con, loaded)
        context.log.info(f"tagged {sum(s.rows for s in summaries)} rows as of {as_of}")
        return dg.MaterializeResult(
            metadata={
                "as_of": str(as_of),
                "dagster/row_count": sum(s.rows for s in summaries),
                "rows_past_retention": sum(s.past_retention for s in summaries),
                "rows_per_table": {s.table: s.rows for s in summaries},
                "rows_per_purpose": {s.table: s.by_purpose for s in summaries},
                "rows_per_legal_basis": {s.table: s.by_legal_basis for s in summaries},
            }
        )

    return [purpose_tags]


def _enforced_in(context: dg.AssetExecutionContext) -> bool:
    """Whether this run's enforcement step has written fresh tags already."""
    event = context.instance.get_latest_materialization_event(ENFORCEMENT)
    return event is not None and event.run_id == context.run.run_id
