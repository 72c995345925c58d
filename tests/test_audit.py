"""The audit ledger: appends chain, tampering is found and named, batches are fast."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lethe.engine.audit import (
    GENESIS,
    LedgerEntry,
    LedgerError,
    LedgerRecord,
    VerifyResult,
    append,
    entries,
    head,
    verify,
)
from lethe.engine.ddl import ensure_ledger, ensure_schemas
from lethe.engine.keyhash import key_hash, secret_for
from lethe.engine.warehouse import connect, transaction

AS_OF = dt.date(2026, 5, 1)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(tmp_path / "warehouse.duckdb")
    ensure_schemas(con)
    ensure_ledger(con)
    yield con
    con.close()


def entry(n: int, **changes: object) -> LedgerEntry:
    fields: dict[str, object] = {
        "run_id": f"run-{n}",
        "as_of": AS_OF,
        "action": "erase",
        "reason": "purpose marketing ended",
        "table_name": "contacts",
        "columns": ["email", "phone"],
        "keys": [f"c{n:04d}-{i}" for i in range(n % 4 + 1)],
        "strategy": "erase",
        "details": {"rows": n % 4 + 1, "values": 2 * (n % 4 + 1)},
    }
    fields.update(changes)
    return LedgerEntry(**fields)  # type: ignore[arg-type]


def hashed(con: duckdb.DuckDBPyConnection, keys: list[str]) -> tuple[str, ...]:
    """`keys` as the ledger stores them: their keyed hashes (the vault's secret)."""
    secret = secret_for(con)
    return tuple(key_hash(secret, k) for k in keys)


def filled(con: duckdb.DuckDBPyConnection, n: int = 5) -> list[str]:
    hashes = append(con, [entry(i) for i in range(1, 3)])
    hashes += append(con, [entry(i) for i in range(3, n + 1)])
    return hashes


def test_empty_and_missing_ledgers_verify(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    assert verify(con) == VerifyResult(ok=True, entries=0)
    assert head(con) == (0, GENESIS)
    bare = duckdb.connect(str(tmp_path / "bare.duckdb"))
    assert verify(bare) == VerifyResult(ok=True, entries=0)
    bare.close()


def test_appends_chain_and_verify(con: duckdb.DuckDBPyConnection) -> None:
    hashes = filled(con)
    result = verify(con)
    assert result.ok and result.entries == 5 and result.problem is None
    stored = entries(con)
    assert [r.seq for r in stored] == [1, 2, 3, 4, 5]
    assert [r.hash for r in stored] == hashes
    assert stored[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(stored, stored[1:], strict=False))
    assert head(con) == (5, hashes[-1])
    first = stored[0]
    assert first.keys == hashed(con, ["c0001-0", "c0001-1"]) and first.key_count == 2
    assert first.columns == ("email", "phone") and first.details == {"rows": 2, "values": 4}
    assert first.as_of == AS_OF and first.strategy == "erase" and first.run_id == "run-1"
    assert [r.seq for r in entries(con, since_seq=3)] == [4, 5]


def document_hash(record: LedgerRecord, **changes: object) -> str:
    """A record's hash recomputed the documented way: sha256 of json.dumps, sorted keys."""
    document = {
        "seq": record.seq,
        "recorded_at": record.recorded_at.isoformat(timespec="microseconds"),  # type: ignore[union-attr]
        "run_id": record.run_id,
        "as_of": record.as_of.isoformat(),
        "action": record.action,
        "table_name": record.table_name,
        "columns": list(record.columns),
        "keys": list(record.keys),
        "key_count": record.key_count,
        "reason": record.reason,
        "strategy": record.strategy,
        "details": dict(record.details),
        "prev_hash": record.prev_hash,
        **changes,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def test_hash_is_sha256_of_documented_canonical_json(con: duckdb.DuckDBPyConnection) -> None:
    """An auditor can recompute every hash with json.dumps alone (see lethe.engine.audit)."""
    when = dt.datetime(2026, 5, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    odd_keys = ['č/"x\n', "\\", "tab\there", "", "😀", "\x7f"]
    append(con, [entry(1, recorded_at=when, keys=odd_keys, table_name=None, strategy=None)])
    filled(con)
    records = entries(con)
    assert records[0].recorded_at == dt.datetime(2026, 5, 1, 10, 30)
    assert records[0].keys == hashed(con, odd_keys)
    assert [document_hash(r) for r in records] == [r.hash for r in records]
    assert verify(con).ok


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.text(max_size=6), max_size=5), min_size=1, max_size=4))
def test_keys_hash_like_json_dumps_whatever_they_contain(keys: list[list[str]]) -> None:
    """Keys of any text are stored as the keyed hash Python's hmac computes, and hash like
    json.dumps."""
    with tempfile.TemporaryDirectory() as folder:
        con = connect(Path(folder) / "warehouse.duckdb")
        ensure_ledger(con)
        hashes = append(con, [entry(1, keys=k) for k in keys])
        records = entries(con)
        assert [document_hash(r) for r in records] == hashes
        assert [r.keys for r in records] == [hashed(con, k) for k in keys]
        assert verify(con).ok
        con.close()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8), st.lists(st.text())),
        min_size=1,
        max_size=4,
    )
)
def test_text_fields_hash_like_json_dumps_whatever_they_contain(
    fields: list[tuple[str, str, list[str]]],
) -> None:
    """Reasons, run ids, table names and column names are quoted column-wise where no
    character needs escaping; the hashes equal json.dumps of the whole entry either way.
    (No keys: hashing them needs a vault, and a keyed hash never needs escaping.)"""
    con = duckdb.connect()
    ensure_ledger(con)
    hashes = append(
        con,
        [
            entry(1, reason=text, run_id=text, table_name=other or None, columns=columns, keys=[])
            for text, other, columns in fields
        ],
    )
    assert [document_hash(r) for r in entries(con)] == hashes
    assert verify(con).ok


TAMPERING = {
    "key count edited": ("UPDATE audit.ledger SET key_count = 1 WHERE seq = 3", 3, "edited"),
    "keys edited": (
        "UPDATE audit.ledger SET keys = list_append(keys, 'c9999') WHERE seq = 4",
        4,
        "edited",
    ),
    "key removed": ("UPDATE audit.ledger SET keys = keys[2:] WHERE seq = 2", 2, "edited"),
    "reason edited": ("UPDATE audit.ledger SET reason = 'request r-1' WHERE seq = 5", 5, "edited"),
    "details edited": (
        """UPDATE audit.ledger SET details = '{"rows":1,"values":4}' WHERE seq = 1""",
        1,
        "edited",
    ),
    "time edited": (
        "UPDATE audit.ledger SET recorded_at = recorded_at - INTERVAL 1 DAY WHERE seq = 2",
        2,
        "edited",
    ),
    "entry deleted": ("DELETE FROM audit.ledger WHERE seq = 3", 3, "removed"),
    "first entry deleted": ("DELETE FROM audit.ledger WHERE seq = 1", 1, "removed"),
    "two entries swapped": (
        "UPDATE audit.ledger SET seq = CASE seq WHEN 2 THEN 3 ELSE 2 END WHERE seq IN (2, 3)",
        2,
        "reordered",
    ),
}


@pytest.mark.parametrize(("sql", "seq", "kind"), TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_is_found_and_named(
    con: duckdb.DuckDBPyConnection, sql: str, seq: int, kind: str
) -> None:
    filled(con)
    con.execute(sql)
    result = verify(con)
    assert not result.ok
    assert result.seq == seq
    assert result.problem is not None
    assert result.problem.startswith(f"entry {seq} {kind}"), result.problem


def test_rewritten_entry_with_recomputed_hash_breaks_the_next_link(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """Someone who edits an entry and fixes its hash is caught at the following entry."""
    filled(con)
    record = entries(con)[1]
    forged = document_hash(record, keys=["c0002-0"], key_count=1)
    con.execute(
        "UPDATE audit.ledger SET keys = ['c0002-0'], key_count = 1, hash = ? WHERE seq = 2",
        [forged],
    )
    result = verify(con)
    assert not result.ok and result.seq == 3
    assert result.problem is not None
    assert result.problem.startswith("entry 3 does not follow entry 2")


def test_append_lands_with_the_callers_transaction(con: duckdb.DuckDBPyConnection) -> None:
    filled(con, 2)
    with pytest.raises(RuntimeError), transaction(con):
        append(con, [entry(3)])
        raise RuntimeError("enforcement failed")
    assert head(con)[0] == 2
    with transaction(con):
        append(con, [entry(3)])
    assert head(con)[0] == 3 and verify(con).ok


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"action": "shred"}, "unknown action 'shred'"),
        ({"details": {"email": "jan@example.cz"}}, "details hold counts only"),
        ({"details": {"rows": True}}, "details hold counts only"),
        ({"strategy": "truncate(to=year)"}, "strategy must be strategy names"),
        ({"strategy": "prefix, length=3"}, "strategy must be strategy names"),
        ({"keys": ["c1", 2]}, "keys must be strings"),
        ({"reason": ""}, "reason must be a non-empty string"),
    ],
)
def test_bad_entries_are_refused_before_anything_is_written(
    con: duckdb.DuckDBPyConnection, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(LedgerError) as info:
        append(con, [entry(1), entry(2, **changes)])
    assert message in str(info.value)
    assert head(con) == (0, GENESIS)


def test_several_strategy_names_may_be_recorded(con: duckdb.DuckDBPyConnection) -> None:
    append(con, [entry(1, strategy="erase,truncate")])
    assert entries(con)[0].strategy == "erase,truncate"


def test_a_single_string_is_not_a_list_of_keys() -> None:
    with pytest.raises(LedgerError, match="not one string"):
        entry(1, keys="c0001")


def test_keys_given_as_arrow_arrays_are_stored_and_hashed_as_python_strings(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """Enforcement hands its key lists over as Arrow arrays: they are stored as the keyed
    hashes Python's hmac computes and hash like json.dumps, mixed with Python lists or not."""
    keys = [["c1", 'č/"x\n', "\\"], ["c2"], ["c3", "c4"]]
    given = [pa.array(keys[0]), pa.array(keys[1], pa.large_string()), keys[2]]
    hashes = append(con, [entry(n, keys=k) for n, k in enumerate(given)])
    records = entries(con)
    assert [r.keys for r in records] == [hashed(con, k) for k in keys]
    assert [document_hash(r) for r in records] == hashes
    assert verify(con).ok
    with pytest.raises(LedgerError, match="keys must be strings, got Arrow int64"):
        entry(1, keys=pa.array([1, 2]))


def test_batch_of_1000_entries_with_10000_keys_each(con: duckdb.DuckDBPyConnection) -> None:
    suffixes = [f"{i:05d}" for i in range(10_000)]
    batch = [
        entry(n, keys=[f"c{n:04d}" + s for s in suffixes], details={"rows": 10_000})
        for n in range(1000)
    ]
    start = time.perf_counter()
    con.execute("BEGIN TRANSACTION")
    hashes = append(con, batch)
    appended = time.perf_counter()
    con.execute("COMMIT")
    took, commit = appended - start, time.perf_counter() - appended
    print(f"\nappend: 1,000 entries x 10,000 keys in {took:.2f} s (then COMMIT {commit:.2f} s)")
    assert len(set(hashes)) == 1000
    assert head(con) == (1000, hashes[-1])
    count, keys, last = con.execute(
        "SELECT count(*), sum(len(keys)), max_by(keys[10000], seq) FROM audit.ledger"
    ).fetchall()[0]
    assert (count, keys, last) == (1000, 10_000_000, hashed(con, ["c099909999"])[0])
    start = time.perf_counter()
    assert verify(con).ok
    print(f"verify: {time.perf_counter() - start:.2f} s")
