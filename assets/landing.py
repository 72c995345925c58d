"""The landing files as external assets: where every personal column enters Lethe.

Lethe does not produce them; they exist so that column lineage starts at the input file
(landing → core → analytics) and a compliance officer can follow a column from its source.
`landing/leftovers` reports every other entry of landing/, so nothing there goes unnoticed.
"""

import dagster as dg

from assets.metadata import OWNERS, compliance_metadata, landing_key, table_compliance
from lethe.ingest import landing_leftovers
from lethe.policy import load_policy
from lethe.tables import TABLES
from pipelines.resources import PolicyResource, WarehouseResource

LEFTOVERS_CHECK = "no_landing_leftovers"

_POLICY = load_policy()

landing_specs = [
    dg.AssetSpec(
        key=landing_key(name),
        group_name="landing",
        description=(
            f"landing/{name}.parquet or landing/{name}.csv, dropped by the source system:"
            f" {table.description} Consumed by the ingest of core.{name}."
        ),
        owners=OWNERS,
        kinds={"parquet", "csv"},
        metadata={
            **table_compliance(_POLICY, name),
            "retention": dg.MetadataValue.md(
                "A drop zone: the file is removed once loaded into core (its checksum is"
                " logged); a file missing a required column stays until it is fixed."
            ),
        },
    )
    for name, table in TABLES.items()
]


@dg.asset(
    key=["landing", "leftovers"],
    group_name="ingest",
    owners=OWNERS,
    # What lies in landing/ is input data of every purpose; the asset itself keeps nothing.
    metadata=compliance_metadata(
        {p.name: p.legal_basis for p in _POLICY.all_purposes().values()},
        "Keeps nothing: it names each unexpected entry of landing/ on every run until the entry"
        " is removed or renamed to a table's file.",
    ),
    description="Entries of landing/ that are no table's file (a backup copy, a name in the"
    " wrong case, a directory, a symbolic link): refused, left in place and named by the"
    f" {LEFTOVERS_CHECK} check, so nothing under LETHE_HOME is kept unnoticed.",
    check_specs=[
        dg.AssetCheckSpec(
            LEFTOVERS_CHECK,
            asset=["landing", "leftovers"],
            description="landing/ holds only table files (NAME.csv or NAME.parquet).",
        )
    ],
)
def leftovers(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
):
    """Lists what in landing/ no ingest will read; never opens or follows any of it."""
    landing = warehouse.paths().landing
    found = landing_leftovers(landing, policy.load().data_schema)
    context.log.info(f"landing/: {len(found)} unexpected entries")
    yield dg.MaterializeResult(metadata={"unexpected_entries": len(found)})
    yield dg.AssetCheckResult(
        check_name=LEFTOVERS_CHECK,
        passed=not found,
        description=(
            f"{landing}: {len(found)} unexpected entries refused and left in place: "
            + ", ".join(found)
            if found
            else "nothing but table files"
        ),
    )
