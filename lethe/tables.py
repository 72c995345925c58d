"""The tables of the default schema (`lethe/eshop/schema.yaml`), for the stages that do not
yet take the schema from their policy. Nothing here is declared by hand: see lethe.schema."""

from __future__ import annotations

from lethe.schema import Column, ForeignKey, Table, default_schema

TABLES: dict[str, Table] = default_schema().tables
# Every table is tagged with purposes except the optional litigation-hold table.
TAGGED_TABLES: tuple[str, ...] = tuple(name for name, t in TABLES.items() if not t.optional)

__all__ = ["TABLES", "TAGGED_TABLES", "Column", "ForeignKey", "Table"]
