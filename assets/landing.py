"""The landing files as external assets: where every personal column enters Lethe.

Lethe does not produce them; they exist so that column lineage starts at the input file
(landing → core → analytics) and a compliance officer can follow a column from its source.
One per declared table, named by the table, described by its declared source;
`landing/leftovers` reports every other entry of landing/, so nothing there goes unnoticed.
"""

import dagster as dg

from assets.metadata import OWNERS, compliance_metadata, landing_key, table_compliance
from lethe.declaration.policy import Policy
from lethe.declaration.schema import Source
from lethe.engine.ingest import landing_leftovers
from pipelines.resources import PolicyResource, WarehouseResource

LEFTOVERS_CHECK = "no_landing_leftovers"


def _written(source: Source) -> str:
    """How the declared source file is written, in words."""
    csv = source.csv
    parts = [f"{csv.delimiter!r}-separated {csv.encoding}"]
    if csv.decimal != ".":
        parts.append(f"decimal {csv.decimal!r}")
    parts += [
        f"{what} as {fmt!r}"
        for what, fmt in (("dates", source.formats.date), ("timestamps", source.formats.timestamp))
        if fmt
    ]
    return ", ".join(parts)


def landing_specs(policy: Policy) -> list[dg.AssetSpec]:
    """The landing file of every table the policy's schema declares."""
    schema = policy.data_schema
    return [
        dg.AssetSpec(
            key=landing_key(name),
            group_name="landing",
            description=(
                f"landing/{table.source.file}.parquet or landing/{table.source.file}.csv"
                f" ({_written(table.source)}), dropped by the source system:"
                f" {table.description} Consumed by the ingest of core.{name}."
            ),
            owners=OWNERS,
            kinds={"parquet", "csv"},
            metadata={
                **table_compliance(policy, name, headers=True),
                "source_timezone": schema.timezone,
                "retention": dg.MetadataValue.md(
                    "A drop zone: the file is removed once loaded into core (its checksum is"
                    " logged); a file missing a required column stays until it is fixed."
                ),
            },
        )
        for name, table in schema.tables.items()
    ]


def leftovers_asset(policy: Policy) -> dg.AssetsDefinition:
    """The asset naming every entry of landing/ that is no declared table's file."""

    @dg.asset(
        key=["landing", "leftovers"],
        group_name="ingest",
        owners=OWNERS,
        # What lies in landing/ is input data of every purpose; the asset itself keeps nothing.
        metadata=compliance_metadata(
            {p.name: p.legal_basis for p in policy.all_purposes().values()},
            "Keeps nothing: it names each unexpected entry of landing/ on every run until the"
            " entry is removed or renamed to a table's file.",
        ),
        description="Entries of landing/ that are no table's file (a backup copy, a name in the"
        " wrong case, a directory, a symbolic link): refused, left in place and named by the"
        f" {LEFTOVERS_CHECK} check, so nothing under LETHE_HOME is kept unnoticed.",
        check_specs=[
            dg.AssetCheckSpec(
                LEFTOVERS_CHECK,
                asset=["landing", "leftovers"],
                description="landing/ holds only the declared tables' files (.csv or .parquet).",
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

    return leftovers
