"""A declared schema as a Fides dataset, so teams using Fides share one data inventory.

Each table is a collection, each column a field with its data category; keys are primary
keys and references are Fides references (`direction: to`), which Fides uses to walk from a
data subject to their rows, as Lethe does along the same references.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from fideslang.models import Dataset

from lethe.declaration.schema import Schema, Table

# Fides' field data types (fideslang DATA_TYPE_NAMES); dates travel as ISO strings.
_FIDES_TYPES = {
    "text": "string",
    "integer": "integer",
    "decimal": "float",
    "date": "string",
    "timestamp": "string",
    "boolean": "boolean",
}


def _fields(key: str, table: Table) -> list[dict[str, Any]]:
    refs = {fk.column: fk for fk in table.foreign_keys}
    fields = []
    for column in table.columns:
        meta: dict[str, Any] = {"data_type": _FIDES_TYPES[column.type]}
        if column.name == table.key:
            meta["primary_key"] = True
        if column.name in refs:
            fk = refs[column.name]
            meta["references"] = [
                {"dataset": key, "field": f"{fk.ref_table}.{fk.ref_column}", "direction": "to"}
            ]
        fields.append(
            {
                "name": column.name,
                "description": column.description or None,
                "data_categories": [column.category],
                "fides_meta": meta,
            }
        )
    return fields


def fides_dataset(schema: Schema, key: str = "lethe") -> Dataset:
    """The schema as a fideslang `Dataset` (validated by fideslang's own model)."""
    return Dataset.model_validate(
        {
            "fides_key": key,
            "name": key,
            "description": f"Tables declared in {Path(schema.source).name or 'a Lethe schema'}.",
            "collections": [
                {"name": t.name, "description": t.description or None, "fields": _fields(key, t)}
                for t in schema.tables.values()
            ],
        }
    )


def fides_yaml(schema: Schema, key: str = "lethe") -> str:
    """The Fides dataset manifest (`dataset: [...]`) as YAML text."""
    dataset = fides_dataset(schema, key).model_dump(mode="json", exclude_none=True)
    return yaml.safe_dump({"dataset": [dataset]}, sort_keys=False, allow_unicode=True)
