"""Rename every table and column of a schema and of a policy written for it (test helper).

The renamed schema, policy and landing files must give the same results as the originals:
nothing in Lethe may depend on the default schema's names.
"""

from __future__ import annotations

import copy
import re
from typing import Any

Names = dict[str, str]  # table -> new table
Columns = dict[tuple[str, str], str]  # (table, column) -> new column
_REF = re.compile(r"^\s*(\w+)\.(\w+)(.*)$", re.S)


class Renaming:
    """A consistent renaming of tables and their columns."""

    def __init__(self, tables: Names, columns: Columns) -> None:
        self.tables, self.columns = tables, columns

    def table(self, name: str) -> str:
        return self.tables[name]

    def column(self, table: str, name: str) -> str:
        return self.columns[(table, name)]

    def ref(self, text: str) -> str:
        """`table.column` (with an optional tail, e.g. ` + 3y`) renamed."""
        m = _REF.match(text)
        assert m, text
        table, column, tail = m.groups()
        return f"{self.table(table)}.{self.column(table, column)}{tail}"

    def schema(self, raw: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(raw)
        tables = {}
        for name, spec in raw["tables"].items():
            spec = copy.deepcopy(spec)
            spec["key"] = self.column(name, spec["key"])
            spec["references"] = {
                self.column(name, c): self.table(t) for c, t in spec.get("references", {}).items()
            }
            spec["columns"] = {self.column(name, c): col for c, col in spec["columns"].items()}
            tables[self.table(name)] = spec
        out["tables"] = tables
        return out

    def _keeps(self, keeps: dict[str, Any]) -> dict[str, Any]:
        return {
            self.table(t): cols if cols == "*" else [self.column(t, c) for c in cols]
            for t, cols in keeps.items()
        }

    def _purpose(self, purpose: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(purpose)
        for key in ("keeps", "pseudonymizes"):
            if key in out:
                out[key] = self._keeps(out[key])
        ret = out["retention"]
        anchors = ret["from"]
        ret["from"] = (
            [self.ref(a) for a in anchors] if isinstance(anchors, list) else (self.ref(anchors))
        )
        for key in ("ends_early_at", "starts_at"):
            if key in ret:
                ret[key] = self.ref(ret[key])
        if "only_where" in ret:
            ret["only_where"] = {self.ref(k): v for k, v in ret["only_where"].items()}
        return out

    def _rules(self, table: str, rules: Any) -> Any:
        if not isinstance(rules, dict):
            return rules
        return {k if k == "default" else self.column(table, k): v for k, v in rules.items()}

    def policy(self, raw: dict[str, Any], schema_file: str) -> dict[str, Any]:
        out = copy.deepcopy(raw)
        out = {"schema": schema_file, **out}
        out["purposes"] = {n: self._purpose(p) for n, p in raw["purposes"].items()}
        out["litigation_hold"] = self._purpose(raw["litigation_hold"])
        out["when_unkept"] = {
            self.table(t): {
                k: self._rules(t, v) if k in ("column", "anonymized") else v
                for k, v in actions.items()
            }
            for t, actions in raw["when_unkept"].items()
        }
        for processor in out.get("processors", []):
            processor["data_shared"] = self._keeps(processor["data_shared"])
        for dataset in out.get("analytics", {}).get("datasets", {}).values():
            self._dataset(dataset)
        return out

    def _in(self, source: str, ref: Any) -> Any:
        """A column of the dataset's source (`name`) or of another table (`table.name`)."""
        if isinstance(ref, list):
            return [self._in(source, r) for r in ref]
        if isinstance(ref, dict):
            return {k: self._in(source, v) for k, v in ref.items()}
        return self.ref(ref) if "." in ref else self.column(source, ref)

    def _dataset(self, dataset: dict[str, Any]) -> None:
        source = dataset["source"]
        dataset["source"] = self.table(source)
        for dimension in dataset.get("dimensions", {}).values():
            for key in ("column", "within", "unit", "first", "days"):
                if key in dimension:
                    dimension[key] = self._in(source, dimension[key])
        for measure in dataset.get("measures", {}).values():
            for key in ("sum", "avg"):
                if key in measure:
                    measure[key] = self._in(source, measure[key])


def suffixed(schema: dict[str, Any], suffix: str = "_x") -> Renaming:
    """Every table and column of a raw schema renamed with a suffix."""
    tables = {t: t + suffix for t in schema["tables"]}
    columns = {(t, c): c + suffix for t, spec in schema["tables"].items() for c in spec["columns"]}
    return Renaming(tables, columns)
