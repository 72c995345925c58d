"""Subject reach: how a row of any declared table reaches its data subject.

A table reaches the subject table along its declared `references` (any depth), as Fides
walks a dataset's references from an identity. This is the one place that turns that path
into SQL; tagging, enforcement, requests, exports and analytics all use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lethe.declaration.schema import Schema
from lethe.declaration.strategies import quote


@dataclass(frozen=True)
class Reach:
    """SQL reaching a row's subject from alias `alias` of a core table.

    `joins` are LEFT JOINs of the tables on the way (a row whose parent is gone keeps a
    NULL subject), `subject` the expression of the subject's key, `via` the aliases of the
    joined rows, nearest first.
    """

    joins: str
    subject: str
    via: tuple[str, ...]


def reach(schema: Schema, table: str, alias: str, *, subject_row: bool = False) -> Reach:
    """How rows of `table` (as `alias`) reach their subject's key; with `subject_row`, the
    subject table's row is joined too (its alias last in `via`)."""
    path = schema.path_to_subject(table)
    if not path:
        return Reach("", f"{alias}.{quote(schema.tables[table].key)}", ())
    hops = path if subject_row else path[:-1]
    joins, via, current = [], [], alias
    holder = alias  # the alias whose column holds the subject's key
    for i, fk in enumerate(hops):
        step = f"_reach_{alias}_{i}"
        joins.append(
            f" LEFT JOIN core.{quote(fk.ref_table)} {step}"
            f" ON {step}.{quote(fk.ref_column)} = {current}.{quote(fk.column)}"
        )
        if i < len(path) - 1:
            holder = step
        via.append(step)
        current = step
    return Reach("".join(joins), f"{holder}.{quote(path[-1].column)}", tuple(via))


def subject_in(schema: Schema, table: str, subjects: str) -> str:
    """A WHERE condition on `core.<table>` (unaliased) selecting the rows whose subject's
    key is in the SELECT `subjects`."""
    key = quote(schema.tables[table].key)
    r = reach(schema, table, "_own")
    if not r.joins:
        return f"{r.subject.removeprefix('_own.')} IN ({subjects})"
    return (
        f"{key} IN (SELECT _own.{key} FROM core.{quote(table)} _own{r.joins}"
        f" WHERE {r.subject} IN ({subjects}))"
    )
