"""Dagster partitions by subject shard (LETHE_SHARDS > 1): the per-shard assets get one
static partition per shard (`00`, `01`, …), so the UI shows each shard's materializations
and checks, and a run of one partition works on that shard's LETHE_HOME (the warehouse
resource picks it from the run's partition)."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from lethe.operations.shards import shard_count, shard_names


def shard_partitions() -> dg.StaticPartitionsDefinition | None:
    """One partition per shard, or None without shards."""
    n = shard_count()
    return dg.StaticPartitionsDefinition(shard_names(n)) if n > 1 else None


def by_shard(assets: Sequence[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """`assets` partitioned by shard (as they are without shards)."""
    partitions = shard_partitions()
    if partitions is None:
        return list(assets)
    return [
        a.map_asset_specs(lambda s: s.replace_attributes(partitions_def=partitions)) for a in assets
    ]
