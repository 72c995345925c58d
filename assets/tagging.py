"""The purpose-tagging asset: every core row gets its purposes, legal bases and retention."""

import dagster as dg

from assets.metadata import OWNERS, all_purposes_metadata
from lethe.catalog import retention_rules
from lethe.policy import LEGAL_BASIS_ARTICLE, load_policy
from lethe.summary import summarize
from lethe.tables import TABLES, TAGGED_TABLES
from lethe.tagging import tag_all
from pipelines.resources import PolicyResource, WarehouseResource

_POLICY = load_policy()


@dg.asset(
    key=["core", "purpose_tags"],
    group_name="tagging",
    deps=[dg.AssetKey(["core", t]) for t in TABLES] + [dg.AssetKey(["requests", "intake"])],
    owners=OWNERS,
    kinds={"duckdb", "sql"},
    tags={f"purpose/{p}": "" for p in _POLICY.all_purposes()},
    metadata={
        **all_purposes_metadata(_POLICY),
        "purposes": dg.MetadataValue.md(
            "\n".join(
                f"- **{p.name}** ({LEGAL_BASIS_ARTICLE[p.legal_basis]}): {p.description}"
                for p in _POLICY.all_purposes().values()
            )
        ),
        "retention_rules": dg.MetadataValue.json(
            {t: retention_rules(_POLICY, t) for t in TAGGED_TABLES}
        ),
    },
)
def purpose_tags(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
) -> dg.MaterializeResult:
    """Tags every row of core.contacts, consents, orders and shipments for the as-of date:
    `_purposes` (purposes that still keep the row), `_legal_bases`, `_retain_until` (when the
    last purpose ends; empty while open-ended) and `_state` (`expired` = no purpose keeps it).
    """
    as_of = policy.as_of_date()
    with warehouse.connect() as con:
        loaded = policy.load()
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
