"""Nothing of the e-shop is named in the core's code: its tables and columns come from the
declared schema. The string literals of every Python file under lethe/ (SQL, keys, messages;
docstrings and comments aside) are searched for the default schema's table and column names,
except in the default schema's own package (lethe/eshop/) and the synthetic data generator."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

from lethe.declaration.schema import default_schema

CORE = REPO / "lethe"
EXEMPT = {CORE / "generate.py"}
# Column names that are also words of Lethe's own vocabulary: plain English in messages (a
# purpose, a reason, a country...) and columns of Lethe's own tables (a backup's or a vault
# token's created_at, a request's completed_at, a release's released_at).
PLAIN_WORDS = {
    "purpose",
    "reason",
    "method",
    "country",
    "city",
    "street",
    "currency",
    "carrier",
    "created_at",
    "completed_at",
    "released_at",
}


# Names a file may hold, with why: the old name of a column of Lethe's own request tables,
# kept to migrate warehouses written by earlier versions.
LEGACY = {("lethe/engine/ddl.py", "contact_id")}


def _names() -> set[str]:
    schema = default_schema()
    names = set(schema.tables)
    for table in schema.tables.values():
        names |= set(table.column_names)
    return names - PLAIN_WORDS


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


_CATEGORY = re.compile(r"\b(user|system)(\.\w+)+")  # Fides keys: user.contact.email


def hits(path: Path, pattern: re.Pattern[str]) -> list[tuple[int, str]]:
    """(line, name) of each name in a string literal of the file (docstrings aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    return [
        (node.lineno, m.group(0))
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
        for m in pattern.finditer(_CATEGORY.sub("", node.value))
    ]


def _pattern(names: set[str]) -> re.Pattern[str]:
    alternatives = "|".join(map(re.escape, sorted(names, key=len, reverse=True)))
    return re.compile(rf"(?<![\w-])({alternatives})(?![\w-])")


def test_core_code_names_no_table_or_column_of_the_default_schema() -> None:
    pattern = _pattern(_names())
    files = [
        p
        for p in sorted(CORE.rglob("*.py"))
        if p not in EXEMPT and "eshop" not in p.relative_to(CORE).parts
    ]
    assert len(files) > 20
    found = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in files
        for line, name in hits(path, pattern)
        if (str(path.relative_to(REPO)), name) not in LEGACY
    ]
    assert found == [], "\n".join(found)


def test_the_search_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The check can fail: a hard-coded table or column in SQL is caught, a docstring, a
    comment or a Fides category is not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Docstrings may say contacts."""\n'
        'SQL = f"SELECT contact_id FROM core.orders WHERE x = {1}"\n'
        'KIND = "user.contact.email"\n'
        "# a comment on shipments\n"
    )
    pattern = _pattern({"contact_id", "orders", "shipments", "contacts", "email"})
    assert hits(sample, pattern) == [(2, "contact_id"), (2, "orders")]
