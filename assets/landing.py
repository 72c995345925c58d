"""The landing files as external assets: where every personal column enters Lethe.

Lethe does not produce them; they exist so that column lineage starts at the input file
(landing → core → analytics) and a compliance officer can follow a column from its source.
One per declared table, named by the table, described by its declared source.
"""

import dagster as dg

from assets.metadata import OWNERS, landing_key, table_compliance
from lethe.policy import Policy
from lethe.schema import Source


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
