"""The audit ledger `audit.ledger`: an append-only, hash-chained record of every step.

Each entry says what was done (action, table, columns, the affected row keys), why
(reason: purpose ended, request id, rule name), with which strategy (its name only),
when (recorded_at, as_of) and in which run. It never holds values, nor a raw key: each
row key is stored as its keyed hash (`lethe.engine.keyhash`, HMAC-SHA256 with the
vault's secret), computed in SQL as it is appended; `details` holds counts only. So the
ledger names no erased subject, and whoever holds the secret can still find a key's
entries (hash the key, look for the hash).

An entry is a batch, not a row: one erasure of 10,000 contacts is one entry whose
`keys` lists the 10,000 contact ids. Entries are chained: `hash` is the SHA-256 of the
entry's canonical JSON (every other field, `prev_hash` included), and `prev_hash` is
the previous entry's `hash` (64 zeros for the first). Canonical JSON is
`json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
encoded as UTF-8, with dates and timestamps as ISO-8601 text (timestamps with
microseconds), so an auditor can recompute it without Lethe.

`append` writes inside the caller's transaction and never begins or commits one, so
enforcement and its ledger entries land together or not at all. The chain shows an
edited, removed or reordered entry; it cannot show the last entries being cut off, or
a chain rewritten from scratch by someone with write access, unless the head hash
(`head`) is also kept somewhere else, such as run metadata.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from lethe.engine.keyhash import MACRO, bind
from lethe.errors import LetheError

GENESIS = "0" * 64
ACTIONS = frozenset(
    {
        "erase",
        "pseudonymize",
        "anonymize",
        "delete",
        "restrict",
        "rectify",
        "hold",
        "release",
        "export",
        "request",
        "restore",
        "purge",
        "backup",
        "reshard",
    }
)
# A strategy is recorded by name only (or names, comma-separated, for an entry that
# covers columns with different strategies); this shape keeps configuration out.
_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}(?:,[a-z][a-z0-9_.-]{0,63}){0,31}")
# Columns in insert order; `_FIELDS` are the ones the hash covers (all but `hash`).
_COLUMNS = (
    "seq",
    "recorded_at",
    "run_id",
    "as_of",
    "action",
    "table_name",
    "columns",
    "keys",
    "key_count",
    "reason",
    "strategy",
    "details",
    "prev_hash",
    "hash",
)
_FIELDS = tuple(sorted(c for c in _COLUMNS if c != "hash"))
_SELECT = ", ".join(f'"{c}"' for c in _COLUMNS)
_PAGE = 1024  # entries fetched per query while verifying: bounded memory for long ledgers


class LedgerError(LetheError):
    """An entry that cannot be appended (unknown action, values in details, bad types)."""


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """One step to record. `seq`, `prev_hash` and `hash` are assigned by `append`.

    `keys` are row ids (contact ids, order ids), never values, stored as their keyed
    hashes (a key that already is one is kept), given as strings or as an Arrow string
    array (a run's million keys then never become Python objects); `details` holds
    counts only (e.g. `{"rows": 12, "values": 30}`); `strategy` is a strategy name, never its
    configuration (several names comma-separated, e.g. `erase,truncate`, where the
    entry's columns had different strategies). `recorded_at` defaults to the time of
    the append (UTC).
    """

    run_id: str
    as_of: dt.date
    action: str
    reason: str
    table_name: str | None = None
    columns: Sequence[str] = ()
    keys: Sequence[str] | pa.Array = ()
    strategy: str | None = None
    details: Mapping[str, int] = field(default_factory=dict)
    recorded_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        # Frozen copies, so an entry cannot change between hashing and insert (an Arrow
        # array is immutable already).
        for name in ("columns", "keys"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise LedgerError(f"ledger {name} must be a list of strings, not one string")
            if name == "keys" and isinstance(value, pa.Array):
                if not _is_string_type(value.type):
                    raise LedgerError(f"ledger keys must be strings, got Arrow {value.type}")
                continue
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))
        if isinstance(self.as_of, dt.datetime):
            object.__setattr__(self, "as_of", self.as_of.date())
        if self.recorded_at is not None:
            object.__setattr__(self, "recorded_at", _utc_naive(self.recorded_at))


@dataclass(frozen=True, kw_only=True)
class LedgerRecord(LedgerEntry):
    """An entry as stored: with its position, its key count and its place in the chain."""

    seq: int
    key_count: int
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking the chain; `problem` names the first bad entry by seq."""

    ok: bool
    entries: int
    problem: str | None = None
    seq: int | None = None


def head(con: duckdb.DuckDBPyConnection) -> tuple[int, str]:
    """The last entry's (seq, hash), or (0, 64 zeros) for an empty ledger.

    Publishing it outside the warehouse (run metadata) lets `verify` be checked
    against truncation: the published entry must still be there with that hash.
    """
    # fetchall, not fetchone: DuckDB keeps a half-read result open on the connection.
    rows = con.execute(
        'SELECT "seq", "hash" FROM audit.ledger ORDER BY "seq" DESC LIMIT 1'
    ).fetchall()
    return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS)


def append(con: duckdb.DuckDBPyConnection, entries: Sequence[LedgerEntry]) -> list[str]:
    """Append entries in order and return their hashes.

    Runs inside the caller's transaction (never begins or commits one). All entries are
    checked before anything is written, their keys hashed in one statement (with the
    secret of the vault beside the warehouse, or attached to `con`), and written with one
    INSERT from an Arrow table. Two writers racing for the same seq collide on the primary
    key, so the chain cannot fork.
    """
    if not entries:
        return []
    table = ledger_rows(entries, head(con), lambda keys: hashed_keys(con, keys))
    view = f"_lethe_ledger_{uuid.uuid4().hex}"
    con.register(view, table)
    try:
        con.execute(f"INSERT INTO audit.ledger ({_SELECT}) SELECT {_SELECT} FROM {view}")
    finally:
        con.unregister(view)
    return table["hash"].to_pylist()


def ledger_rows(
    entries: Sequence[LedgerEntry],
    last: tuple[int, str],
    hash_keys: Callable[[pa.LargeListArray], pa.LargeListArray],
) -> pa.Table:
    """The ledger rows (every column, in order) of `entries` appended after the entry
    `last` (its seq and hash, as `head` gives them), their keys hashed by `hash_keys`
    (`hashed_keys` on a connection); every entry is checked first. What `append` writes,
    for a ledger in any engine."""
    now = _utc_naive(dt.datetime.now(dt.UTC))
    for i, entry in enumerate(entries):
        _check(entry, i)
    keys = hash_keys(_string_lists([e.keys for e in entries], "keys"))
    columns = _string_lists([e.columns for e in entries], "columns")

    last_seq, prev = last
    n = len(entries)
    seqs = list(range(last_seq + 1, last_seq + n + 1))
    recorded = [e.recorded_at or now for e in entries]
    details = [_canonical(dict(e.details)) for e in entries]
    key_counts = [len(e.keys) for e in entries]
    values = {
        name: [getattr(e, name) for e in entries]
        for name in ("run_id", "as_of", "action", "table_name", "reason", "strategy")
    }
    values.update(seq=seqs, recorded_at=recorded, key_count=key_counts, details=details)
    hashes = _chain(_texts(values, _lists_json(columns), _lists_json(keys)), prev)
    return pa.table(
        {
            "seq": pa.array(seqs, pa.int64()),
            "recorded_at": pa.array(recorded, pa.timestamp("us")),
            "run_id": pa.array([e.run_id for e in entries], pa.string()),
            "as_of": pa.array([e.as_of for e in entries], pa.date32()),
            "action": pa.array([e.action for e in entries], pa.string()),
            "table_name": pa.array([e.table_name for e in entries], pa.string()),
            "columns": columns,
            "keys": keys,
            "key_count": pa.array(key_counts, pa.int64()),
            "reason": pa.array([e.reason for e in entries], pa.string()),
            "strategy": pa.array([e.strategy for e in entries], pa.string()),
            "details": pa.array(details, pa.string()),
            "prev_hash": pa.array([prev, *hashes[:-1]], pa.string()),
            "hash": pa.array(hashes, pa.string()),
        }
    )


def _texts(
    values: dict[str, list[Any]], columns_json: list[bytes], keys_json: list[bytes]
) -> dict[str, list[Any]]:
    """Every field's canonical JSON but prev_hash, per entry, from its values (`details`
    already canonical JSON; `columns` and `keys` given as their UTF-8 JSON, `keys` kept
    so: a large entry's keys are fed to the hash as they are)."""
    return {
        "action": _json_strings(values["action"]),
        "as_of": _json_strings([d.isoformat() for d in values["as_of"]]),
        "columns": [c.decode() for c in columns_json],
        "details": values["details"],
        "key_count": [str(c) for c in values["key_count"]],
        "keys": keys_json,
        "reason": _json_strings(values["reason"]),
        "recorded_at": _json_strings(
            [r.isoformat(timespec="microseconds") for r in values["recorded_at"]]
        ),
        "run_id": _json_strings(values["run_id"]),
        "seq": [str(q) for q in values["seq"]],
        "strategy": _json_strings(values["strategy"]),
        "table_name": _json_strings(values["table_name"]),
    }


def _around_keys(texts: dict[str, list[Any]]) -> tuple[list[str], list[str]]:
    """Each entry's canonical JSON before its keys' JSON and after its prev_hash value,
    column-wise. `keys` and `prev_hash` are neighbours in the sorted fields, so an entry's
    text is: head, keys, `,"prev_hash":"`, prev_hash, tail."""
    before = [f for f in _FIELDS if f < "keys"]
    after = [f for f in _FIELDS if f > "prev_hash"]
    head = pl.concat_str(
        [pl.lit("{")]
        + [e for i, f in enumerate(before) for e in _field_exprs(f, i == 0)]
        + [pl.lit(',"keys":')]
    )
    tail = pl.concat_str(
        [pl.lit('"')] + [e for f in after for e in _field_exprs(f, False)] + [pl.lit("}")]
    )
    frame = pl.DataFrame(
        {f: texts[f] for f in before + after}, schema=dict.fromkeys(before + after, pl.String)
    )
    parts = frame.select(head.alias("head"), tail.alias("tail"))
    return parts["head"].to_list(), parts["tail"].to_list()


def _entry_hash(head: str, keys: bytes, prev: str, tail: str) -> str:
    """SHA-256 of one entry's canonical JSON, from its parts (`_around_keys`)."""
    digest = hashlib.sha256(head.encode())
    digest.update(keys)
    digest.update(f',"prev_hash":"{prev}{tail}'.encode())
    return digest.hexdigest()


def _hashes(texts: dict[str, list[Any]], prevs: list[str]) -> list[str]:
    """SHA-256 of each entry's canonical JSON, given the prev_hash each one names."""
    heads, tails = _around_keys(texts)
    return [
        _entry_hash(head, keys, prev, tail)
        for head, keys, prev, tail in zip(heads, texts["keys"], prevs, tails, strict=True)
    ]


def _chain(texts: dict[str, list[Any]], prev: str) -> list[str]:
    """The hashes of consecutive new entries, each chained to the one before (`prev`
    first): the text is assembled column-wise, only the hashing is sequential."""
    heads, tails = _around_keys(texts)
    hashes = []
    for head, keys, tail in zip(heads, texts["keys"], tails, strict=True):
        prev = _entry_hash(head, keys, prev, tail)
        hashes.append(prev)
    return hashes


def _field_exprs(name: str, first: bool) -> list[pl.Expr]:
    """`"name":<json>` of one field, comma-separated from the field before it."""
    return [pl.lit(("" if first else ",") + f'"{name}":'), pl.col(name)]


# json.dumps(ensure_ascii=False) escapes only these; other strings are just quoted.
_JSON_ESCAPED = r'["\\\x00-\x1f]'


def _json_strings(values: list[str | None]) -> list[str]:
    """`_canonical` of each string (None: null), quoting column-wise what needs no escape."""
    series = pl.Series(values, dtype=pl.String)
    quoted = pl.select(
        pl.when(series.is_null())
        .then(pl.lit("null"))
        .otherwise(pl.concat_str(pl.lit('"'), pl.lit(series), pl.lit('"')))
    ).to_series()
    out = quoted.to_list()
    for i in series.str.contains(_JSON_ESCAPED).fill_null(False).arg_true().to_list():
        out[i] = _canonical(values[i])
    return out


def entries(con: duckdb.DuckDBPyConnection, since_seq: int = 0) -> list[LedgerRecord]:
    """Entries with seq > `since_seq`, in order (e.g. the erasures to re-apply after a restore)."""
    rows = con.execute(
        f'SELECT {_SELECT} FROM audit.ledger WHERE "seq" > ? ORDER BY "seq"', [since_seq]
    ).fetchall()
    records = []
    for values in rows:
        row = dict(zip(_COLUMNS, values, strict=True))
        records.append(
            LedgerRecord(
                **{k: row[k] for k in _COLUMNS if k not in ("columns", "keys", "details")},
                columns=row["columns"] or (),
                keys=row["keys"] or (),
                details=json.loads(row["details"]) if row["details"] else {},
            )
        )
    return records


def verify(con: duckdb.DuckDBPyConnection) -> VerifyResult:
    """Check the hash chain and name the first entry that was edited, removed or reordered.

    An empty (or not yet created) ledger verifies. Entries are read a page at a time,
    as Arrow, so the keys are never turned into Python objects one by one.
    """
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables"
        " WHERE table_schema = 'audit' AND table_name = 'ledger'"
    ).fetchall()
    if not exists[0][0]:
        return VerifyResult(ok=True, entries=0)
    total = con.execute("SELECT count(*) FROM audit.ledger").fetchall()[0][0]

    def bad(seq: int, problem: str) -> VerifyResult:
        return VerifyResult(ok=False, entries=total, problem=problem, seq=seq)

    expected, prev, after = 1, GENESIS, 0
    while True:
        page = con.sql(
            f'SELECT {_SELECT} FROM audit.ledger WHERE "seq" > ? ORDER BY "seq" LIMIT ?',
            params=[after, _PAGE],
        ).to_arrow_table()
        if page.num_rows == 0:
            return VerifyResult(ok=True, entries=total)
        rows = page.drop_columns(["keys", "columns"]).to_pylist()
        values = {name: [r[name] for r in rows] for name in _COLUMNS if name in rows[0]}
        # Re-canonicalized: details that only differ in layout are the same details.
        values["details"] = [_canonical(json.loads(d) if d else None) for d in values["details"]]
        texts = _texts(values, _lists_json(page["columns"]), _lists_json(page["keys"]))
        computed = _hashes(texts, values["prev_hash"])
        for i, row in enumerate(rows):
            seq = row["seq"]
            if seq > expected:
                where = (
                    f"the ledger starts at seq {seq}"
                    if expected == 1
                    else f"seq jumps from {expected - 1} to {seq}"
                )
                return bad(expected, f"entry {expected} removed: {where}")
            if seq < expected:
                return bad(seq, f"entry {seq} duplicated")
            if computed[i] != row["hash"]:
                # The chain links (read only now, on failure) tell moved from edited.
                links = con.execute('SELECT "prev_hash", "hash" FROM audit.ledger').fetchall()
                entry_texts = {name: [text[i]] for name, text in texts.items()}
                moved = _original_seq(row, entry_texts, {str(h): str(p) for p, h in links})
                if moved is not None and moved != seq:
                    return bad(seq, f"entry {seq} reordered: it was recorded as seq {moved}")
                return bad(seq, f"entry {seq} edited: its hash does not match its content")
            if row["prev_hash"] != prev:
                return bad(
                    seq,
                    f"entry {seq} does not follow entry {seq - 1}: prev_hash mismatch"
                    f" (entry {seq - 1} was rewritten, or entries were removed or reordered)",
                )
            prev, expected = row["hash"], seq + 1
        after = rows[-1]["seq"]


def _check(entry: LedgerEntry, index: int) -> None:
    where = f"ledger entry {index + 1}"
    if entry.action not in ACTIONS:
        known = ", ".join(sorted(ACTIONS))
        raise LedgerError(f"{where}: unknown action {entry.action!r} (known: {known})")
    for name in ("run_id", "reason"):
        value = getattr(entry, name)
        if not isinstance(value, str) or not value:
            raise LedgerError(f"{where}: {name} must be a non-empty string")
    if not isinstance(entry.as_of, dt.date):
        raise LedgerError(f"{where}: as_of must be a date, got {entry.as_of!r}")
    if entry.table_name is not None and not isinstance(entry.table_name, str):
        raise LedgerError(f"{where}: table_name must be a string")
    if entry.strategy is not None and not (
        isinstance(entry.strategy, str) and _NAME.fullmatch(entry.strategy)
    ):
        raise LedgerError(
            f"{where}: strategy must be strategy names (comma-separated), not {entry.strategy!r}"
        )
    for key, count in entry.details.items():
        # Counts only: a value placed in details would outlive its erasure here.
        if not isinstance(key, str) or type(count) is not int:
            raise LedgerError(f"{where}: details hold counts only, got {key!r}: {count!r}")


def _string_lists(lists: list[Sequence[str] | pa.Array], name: str) -> pa.Array:
    """One list<string> column from per-entry sequences, built from a flat column."""
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in lists])
    if any(isinstance(x, pa.Array) for x in lists):
        flat = pa.concat_arrays(
            [
                x.cast(pa.large_string())
                if isinstance(x, pa.Array)
                else _string_lists([x], name).values
                for x in lists
            ]
        )
        return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), flat)
    try:
        # Polars builds a string column from Python str faster than pyarrow does,
        # and refuses non-strings (strict), which would hash differently once stored.
        flat = pl.Series(name, list(itertools.chain.from_iterable(lists)), dtype=pl.String)
    except TypeError as e:
        raise LedgerError(f"ledger {name} must be strings: {e}") from None
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), flat.to_arrow())


def hashed_keys(
    con: duckdb.DuckDBPyConnection, keys: pa.LargeListArray, secret: bytes | None = None
) -> pa.LargeListArray:
    """The same lists with every key replaced by its keyed hash, computed in one statement
    on `con` (DuckDB keeps the order of a plain projection), with `secret` (default: the
    vault's of `con`'s warehouse, `lethe.engine.keyhash.secret_for`)."""
    if len(keys.values) == 0:
        return keys
    bind(con, secret)
    view = f"_lethe_keys_{uuid.uuid4().hex}"
    con.register(view, pa.table({"k": keys.values}))
    try:
        hashed = con.sql(f"SELECT {MACRO}(k) AS k FROM {view}").to_arrow_table()["k"]
    finally:
        con.unregister(view)
    return pa.LargeListArray.from_arrays(keys.offsets, hashed.combine_chunks())


def _is_string_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _utc_naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _lists_json(lists: pa.Array | pa.ChunkedArray) -> list[bytes]:
    """The canonical JSON of each list of strings, as UTF-8. Joined and quoted in Arrow,
    unless one of the list's strings needs escaping (rare for ids): a list of a million
    keys never becomes Python strings."""
    if len(lists) == 0:
        return []
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    joined = pc.binary_join(lists, pa.scalar('","', lists.type.value_type))
    if not pa.types.is_string(joined.type):
        joined = joined.cast(pa.large_string())
    escaped = pc.match_substring_regex(pc.list_flatten(lists), _JSON_ESCAPED)
    parents = pc.list_parent_indices(lists).to_numpy()
    needs_json = set(parents[escaped.fill_null(False).to_numpy(zero_copy_only=False)].tolist())
    _, offset_buffer, data = joined.buffers()
    width = np.int32 if pa.types.is_string(joined.type) else np.int64
    offsets = np.frombuffer(offset_buffer, width)[joined.offset : joined.offset + len(joined) + 1]
    text = memoryview(data) if data is not None else memoryview(b"")
    counts = pc.list_value_length(lists).to_pylist()
    out = []
    for i, count in enumerate(counts):
        if count is None or i in needs_json:
            out.append(_canonical(lists[i].as_py()).encode())
        elif count == 0:
            out.append(b"[]")
        else:
            out.append(b'["' + text[offsets[i] : offsets[i + 1]] + b'"]')
    return out


def _original_seq(
    row: dict[str, Any], texts: dict[str, list[str]], chain: dict[str, str]
) -> int | None:
    """The seq an entry was written at, if its content proves it (a moved, unedited entry).

    Its position is the number of prev_hash links back to the genesis; the entry must
    then hash correctly at that position.
    """
    depth, link = 1, row["prev_hash"]
    while link != GENESIS:
        if link not in chain or depth > len(chain):
            return None
        depth, link = depth + 1, chain[link]
    at_depth = _hashes({**texts, "seq": [str(depth)]}, [row["prev_hash"]])
    return depth if at_depth == [row["hash"]] else None
