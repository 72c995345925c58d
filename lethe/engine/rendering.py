"""Plan statements rendered per engine: SQLGlot plus the rewrites it does not make itself.

Plans are generated in DuckDB's dialect (`lethe.engine.plan`). SQLGlot translates most of
it (lists to arrays, `list()` to `array_agg`, `list_contains` to `= ANY`, `strftime` to
`to_char`, `date_diff` to epoch arithmetic, `uuid()` to `gen_random_uuid()`); what it
leaves as DuckDB-only SQL is rewritten here, as expression transforms, in one place:

- `rowid` (DuckDB's row id) becomes `ctid` (PostgreSQL's physical row address);
- `CREATE OR REPLACE [TEMP] TABLE` becomes `DROP TABLE IF EXISTS` and `CREATE [TEMP] TABLE`
  (built under another name and renamed when it reads the table it replaces);
- `GROUP BY ALL` becomes the positions of the select items that are not aggregates;
- `contains(text, part)` becomes `strpos(text, part) > 0`;
- `sha256(text)` hashes `convert_to(text, 'UTF8')` (PostgreSQL's takes bytes);
- `regexp_full_match(text, pattern)` becomes `text ~ '^(?:pattern)$'`;
- the keyed hash macro `lethe_key_hash(text)` is written out (`keyhash.POSTGRES_HASH`);
- a subquery in FROM or JOIN without an alias gets one (PostgreSQL before 16 needs it).

DuckDB gets the generated text unchanged: parsing it costs more than DuckDB needs to run it.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from lethe.engine.keyhash import MACRO, POSTGRES_HASH

DUCKDB = "duckdb"
POSTGRES = "postgres"


def _row_id(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Column) and node.name.lower() == "rowid":
        node.set("this", exp.to_identifier("ctid"))
    return node


def _contains(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Contains):
        return exp.GT(
            this=exp.func("strpos", node.this, node.expression), expression=exp.Literal.number(0)
        )
    return node


def _hash_text(node: exp.Expression) -> exp.Expression:
    # DuckDB hashes text; PostgreSQL's sha256 takes bytes.
    if isinstance(node, exp.SHA2):
        node.set("this", exp.func("convert_to", node.this, exp.Literal.string("UTF8")))
    return node


def _full_match(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.RegexpFullMatch) and isinstance(node.expression, exp.Literal):
        pattern = exp.Literal.string(f"^(?:{node.expression.name})$")
        return exp.RegexpLike(this=node.this, expression=pattern)
    return node


_KEY = "_lethe_key"  # the placeholder of the hashed text in `POSTGRES_HASH`


def _key_hash(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Anonymous) and node.name.lower() == MACRO:
        (key,) = node.expressions
        written = sqlglot.parse_one(POSTGRES_HASH.replace("{k}", _KEY), read=POSTGRES)
        return written.transform(
            lambda n: key.copy() if isinstance(n, exp.Column) and n.name == _KEY else n
        )
    return node


def _group_by_all(node: exp.Expression) -> exp.Expression:
    group = node.args.get("group") if isinstance(node, exp.Select) else None
    if group is not None and group.args.get("all"):
        positions = [
            exp.Literal.number(i)
            for i, item in enumerate(node.expressions, start=1)
            if not item.find(exp.AggFunc)
        ]
        node.set("group", exp.Group(expressions=positions) if positions else None)
    return node


def _alias_subqueries(statement: exp.Expression) -> None:
    for i, sub in enumerate(list(statement.find_all(exp.Subquery))):
        if isinstance(sub.parent, exp.From | exp.Join) and not sub.alias:
            sub.set("alias", exp.TableAlias(this=exp.to_identifier(f"_q{i}")))


def _replace_table(statement: exp.Expression) -> list[exp.Expression]:
    """`CREATE OR REPLACE [TEMP] TABLE t AS …` as a drop and a create; when the query reads
    `t` itself, the new table is built under another name first and then renamed."""
    if not (isinstance(statement, exp.Create) and statement.args.get("replace")):
        return [statement]
    statement.set("replace", False)
    target = statement.this
    table = (target.this if isinstance(target, exp.Schema) else target).copy()
    drop = exp.Drop(tables=[table.copy()], kind="TABLE", exists=True)
    query = statement.expression
    reads_itself = query is not None and any(
        t.name == table.name and t.db == table.db for t in query.find_all(exp.Table)
    )
    if not reads_itself:
        return [drop, statement]
    building = f"{table.name}_replacing"
    target.replace(exp.table_(building, db=table.db or None))
    rename = exp.Alter(
        this=exp.table_(building, db=table.db or None),
        kind="TABLE",
        actions=[exp.AlterRename(this=exp.table_(table.name))],
    )
    return [statement, drop, rename]


def to_postgres(sql: str) -> list[str]:
    """One DuckDB-dialect statement as the PostgreSQL statements doing the same."""
    statement = sqlglot.parse_one(sql, read=DUCKDB)
    statement = (
        statement.transform(_row_id)
        .transform(_contains)
        .transform(_hash_text)
        .transform(_group_by_all)
        .transform(_full_match)
        .transform(_key_hash)  # last: its sha256 takes bytes already
    )
    _alias_subqueries(statement)
    return [s.sql(POSTGRES) for s in _replace_table(statement)]


def render(statements: tuple[str, ...], dialect: str) -> list[str]:
    """Plan statements (DuckDB dialect) as `dialect` runs them; DuckDB's unchanged."""
    if dialect == DUCKDB:
        return list(statements)
    if dialect == POSTGRES:
        return [out for sql in statements for out in to_postgres(sql)]
    return [sqlglot.transpile(sql, read=DUCKDB, write=dialect)[0] for sql in statements]
