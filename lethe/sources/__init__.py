"""Declared sources outside landing/: PostgreSQL tables read in batches, and erasure,
rectification and restriction carried back to them."""
