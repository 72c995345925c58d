"""Lethe's benchmark harness: `python -m bench` (or `make bench`); see bench/README.md."""

from bench import postgres_stages, shard_stages, stages

# PostgreSQL's column (bench/postgres_stages.py builds on bench.stages, so it is registered
# here, once both are loaded), after the stages whose fixtures it starts from.
stages.STAGES.update(postgres_stages.POSTGRES_STAGES)
# Subject shards: they start from the landing fixture only.
stages.STAGES.update(shard_stages.SHARD_STAGES)
