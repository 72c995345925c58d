"""The pseudonym vault: stable random tokens, forgetting subjects, owner-only file, speed."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest

from lethe.engine import vault
from lethe.engine.ddl import TOKENS_INDEX
from lethe.engine.vault import (
    VaultError,
    attach,
    ensure_tokens,
    forget_subjects,
    lookup,
    reidentify,
    tokens_for,
)
from lethe.engine.warehouse import connect, transaction
from lethe.operations.home import Home

TOKEN = re.compile(r"tok_[0-9a-f]{32}")


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "lethe").ensure()


@pytest.fixture
def con(home: Home) -> Iterator[duckdb.DuckDBPyConnection]:
    con = vault.open_vault(home.vault)
    yield con
    con.close()


def rows(*triples: tuple[str | None, str, str | None]) -> pl.DataFrame:
    subject, kind, value = zip(*triples, strict=True)
    return pl.DataFrame(
        {"subject": subject, "kind": kind, "value": value},
        schema={"subject": pl.String, "kind": pl.String, "value": pl.String},
    )


def token(con: duckdb.DuckDBPyConnection, kind: str, value: str) -> str:
    found = lookup(con, kind, [value])
    assert found["value"].to_list() == [value]
    return str(found["token"][0])


def test_vault_file_is_owner_only(home: Home, con: duckdb.DuckDBPyConnection) -> None:
    assert stat.S_IMODE(os.stat(home.vault).st_mode) == 0o600


def test_vault_file_must_be_named_vault(tmp_path: Path) -> None:
    with pytest.raises(VaultError, match="must be named vault.duckdb"):
        vault.open_vault(tmp_path / "tokens.duckdb")


def test_same_value_same_token_across_calls_and_tables(con: duckdb.DuckDBPyConnection) -> None:
    # contacts.street and shipments.street share the kind "street", so they join.
    assert ensure_tokens(con, rows(("c1", "street", "Hlavní 1"), ("c2", "street", "Dlouhá 7"))) == 2
    first = token(con, "street", "Hlavní 1")
    shipments = pa.table({"subject": ["c1", "c1"], "kind": ["street", "street"]}).append_column(
        "value", pa.array(["Hlavní 1", "Hlavní 1"])
    )
    assert ensure_tokens(con, shipments) == 0
    assert ensure_tokens(con, rows(("c1", "street", "Hlavní 1"))) == 0
    assert token(con, "street", "Hlavní 1") == first
    assert con.execute("SELECT count(*) FROM vault.tokens").fetchall() == [(2,)]


def test_a_duckdb_vault_has_no_index_and_an_older_one_loses_it(home: Home) -> None:
    con = vault.open_vault(home.vault)
    try:
        # An older vault: the unique index on (kind, value) that every issue kept up to date.
        con.execute(f"CREATE UNIQUE INDEX {TOKENS_INDEX} ON vault.tokens (kind, value)")
        assert ensure_tokens(con, rows(("c1", "street", "Hlavní 1"))) == 1
    finally:
        con.close()
    con = vault.open_vault(home.vault)
    try:
        assert con.execute("SELECT count(*) FROM duckdb_indexes()").fetchall() == [(0,)]
        # Still one token per value: issuing the same values again issues none.
        assert ensure_tokens(con, rows(("c1", "street", "Hlavní 1"), ("c2", "street", "x"))) == 1
        assert ensure_tokens(con, rows(("c2", "street", "x"), ("c1", "street", "Hlavní 1"))) == 0
        assert con.execute(
            "SELECT count(*), count(DISTINCT (kind, value)) FROM vault.tokens"
        ).fetchall() == [(2, 2)]
    finally:
        con.close()


def test_different_values_and_kinds_get_different_random_tokens(
    con: duckdb.DuckDBPyConnection,
) -> None:
    ensure_tokens(
        con,
        rows(
            ("c1", "first_name", "Jan"),
            ("c2", "first_name", "Eva"),
            ("c1", "last_name", "Jan"),  # same text, other kind: other token
            ("c3", "first_name", None),  # NULL stays NULL
            (None, "first_name", "Petr"),
        ),
    )
    tokens = [token(con, "first_name", "Jan"), token(con, "first_name", "Eva")]
    tokens += [token(con, "last_name", "Jan"), token(con, "first_name", "Petr")]
    assert len(set(tokens)) == 4
    assert all(TOKEN.fullmatch(t) for t in tokens)
    assert con.execute("SELECT count(*) FROM vault.tokens").fetchall() == [(4,)]
    found = lookup(con, "first_name", pl.Series(["Eva", "Jan", "Zdeněk"]))
    both = tokens_for(con, rows(("c1", "first_name", "Jan"), ("c9", "last_name", "Jan")))
    assert both.rows() == [("first_name", "Jan", tokens[0]), ("last_name", "Jan", tokens[2])]
    assert found.columns == ["value", "token"]
    assert found["value"].to_list() == ["Eva", "Jan"]
    assert reidentify(con, [tokens[0], "tok_" + "0" * 32])["value"].to_list() == ["Jan"]


def test_one_value_of_several_subjects_gets_one_token(con: duckdb.DuckDBPyConnection) -> None:
    assert ensure_tokens(con, rows(("c2", "street", "Nová 3"), ("c1", "street", "Nová 3"))) == 1
    subject = con.execute("SELECT subject FROM vault.tokens").fetchall()
    assert subject == [("c1",)]


def test_tokens_cannot_be_derived_from_values(tmp_path: Path) -> None:
    """Two fresh vaults give the same value different tokens, even with DuckDB's seed fixed."""
    issued = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        con = vault.open_vault(tmp_path / name / "vault.duckdb")
        con.execute("SELECT setseed(0.5)").fetchall()  # makes gen_random_uuid() repeat
        ensure_tokens(con, rows(("c1", "email", "jan.novak@example.cz")))
        issued.append(token(con, "email", "jan.novak@example.cz"))
        con.close()
    assert issued[0] != issued[1]
    digest = hashlib.sha256(b"jan.novak@example.cz").hexdigest()
    assert all(digest[:32] not in t and "novak" not in t for t in issued)


def test_forget_subjects_makes_their_tokens_anonymous(con: duckdb.DuckDBPyConnection) -> None:
    ensure_tokens(
        con,
        rows(
            ("c1", "email", "jan@example.cz"),
            ("c1", "contact_id", "c1"),
            ("c2", "email", "eva@example.cz"),
        ),
    )
    jan = token(con, "email", "jan@example.cz")
    assert forget_subjects(con, ["c1", "c9"]) == 2
    assert lookup(con, "email", ["jan@example.cz", "eva@example.cz"])["value"].to_list() == [
        "eva@example.cz"
    ]
    assert lookup(con, "contact_id", ["c1"]).is_empty()
    assert reidentify(con, [jan]).is_empty()
    assert forget_subjects(con, ["c1"]) == 0
    # A value seen again later gets a new token, unrelated to the forgotten one.
    ensure_tokens(con, rows(("c1", "email", "jan@example.cz")))
    assert token(con, "email", "jan@example.cz") != jan


def test_input_must_have_subject_kind_and_value(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(VaultError, match="lacks column"):
        ensure_tokens(con, pl.DataFrame({"kind": ["email"], "value": ["x@example.cz"]}))
    with pytest.raises(VaultError, match="one string"):
        lookup(con, "email", "x@example.cz")


def test_tokens_join_in_warehouse_sql_with_the_vault_attached(home: Home) -> None:
    """Enforcement's path: vault attached to the warehouse, tokens made and joined in SQL."""
    wh = connect(home.warehouse)
    wh.execute("CREATE TABLE contacts (contact_id VARCHAR, email VARCHAR)")
    wh.execute("INSERT INTO contacts VALUES ('c1', 'jan@example.cz'), ('c2', NULL)")
    attach(wh, home.vault)
    assert stat.S_IMODE(os.stat(home.vault).st_mode) == 0o600
    source = wh.sql("SELECT contact_id AS subject, 'email' AS kind, email AS value FROM contacts")
    assert ensure_tokens(wh, source) == 1
    # Writing both files in one transaction is refused by DuckDB; reading the vault is fine.
    with transaction(wh):
        wh.execute(
            """UPDATE contacts SET email = t.token FROM vault.tokens AS t
            WHERE t.kind = 'email' AND t.value = contacts.email"""
        )
    (email,) = wh.execute("SELECT email FROM contacts WHERE contact_id = 'c1'").fetchall()[0]
    assert TOKEN.fullmatch(email)
    assert reidentify(wh, [email])["value"].to_list() == ["jan@example.cz"]
    wh.close()


def test_read_only_attach_needs_the_vault_closed_elsewhere(home: Home) -> None:
    writer = vault.open_vault(home.vault)
    ensure_tokens(writer, rows(("c1", "email", "jan@example.cz")))
    wh = connect(home.warehouse)
    with pytest.raises(duckdb.Error, match="already attached"):
        attach(wh, home.vault, read_only=True)
    writer.close()
    attach(wh, home.vault, read_only=True)
    assert lookup(wh, "email", ["jan@example.cz"]).height == 1
    with pytest.raises(duckdb.Error):
        ensure_tokens(wh, rows(("c2", "email", "eva@example.cz")))
    wh.close()


def test_100000_values_are_tokenized_at_once(con: duckdb.DuckDBPyConnection) -> None:
    n = 100_000
    frame = pl.DataFrame(
        {
            "subject": [f"c{i:06d}" for i in range(n)],
            "kind": ["email"] * n,
            "value": [f"user{i}@example.cz" for i in range(n)],
        }
    )
    start = time.perf_counter()
    issued = ensure_tokens(con, frame)
    took = time.perf_counter() - start
    start = time.perf_counter()
    again = ensure_tokens(con, frame)
    repeat = time.perf_counter() - start
    print(f"\nensure_tokens: {n:,} new values in {took:.2f} s, again in {repeat:.2f} s")
    assert (issued, again) == (n, 0)
    distinct = con.execute("SELECT count(DISTINCT token) FROM vault.tokens").fetchall()
    assert distinct == [(n,)]
    start = time.perf_counter()
    found = lookup(con, "email", frame["value"])
    print(f"lookup: {found.height:,} values in {time.perf_counter() - start:.2f} s")
    assert found.height == n
