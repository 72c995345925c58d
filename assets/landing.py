"""The landing files as external assets: where every personal column enters Lethe.

Lethe does not produce them; they exist so that column lineage starts at the input file
(landing → core → analytics) and a compliance officer can follow a column from its source.
"""

import dagster as dg

from assets.metadata import OWNERS, landing_key, table_compliance
from lethe.policy import load_policy
from lethe.tables import TABLES

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
