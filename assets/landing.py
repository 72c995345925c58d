"""The landing files as external assets: where every personal column enters Lethe.

Lethe does not produce them; they exist so that column lineage starts at the input file
(landing → core → analytics) and a compliance officer can follow a column from its source.
"""

import dagster as dg

from assets.metadata import OWNERS, column_schema, landing_key
from lethe.tables import TABLES

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
        metadata={"dagster/column_schema": column_schema(name)},
    )
    for name, table in TABLES.items()
]
