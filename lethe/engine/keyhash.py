"""Keyed hashes of keys: what Lethe keeps of a key it must no longer hold.

The audit ledger never stores a raw row key, and the keys of erased or anonymized
subjects in Lethe's own tables (requests, erasure register, logs, released holds) are
replaced by the same hash, so nothing under LETHE_HOME names such a subject any more,
yet a restore can still match a backup's rows to them.

The hash is HMAC-SHA256 of the key's UTF-8 text, keyed with a secret that is created
once and lives only in the vault (`vault.key_secret`, beside the pseudonym tokens: the
additional information of GDPR Art. 4(5)); it is truncated to 128 bits (RFC 2104 allows
half the output) and written `kh_` + 32 hex digits. Without the secret no one can test a
guessed key against it; with it (an authorized lookup, a restore) the same key always
gives the same hash. Backing up vault.duckdb backs up the secret: a vault restored from
a backup still matches every hash.

In SQL the hash is the temporary macro `lethe_key_hash(text)` that `bind` defines on a
connection: the secret reaches DuckDB as connection variables (HMAC's inner and outer
pads), never in SQL text, a table of the warehouse or a log. On PostgreSQL the macro is
written out in place (`POSTGRES_HASH`, by `lethe.engine.rendering`) and reads the pads
from transaction-local settings that `bind_postgres` sets.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

import duckdb

from lethe.engine.ddl import ensure_vault
from lethe.engine.warehouse import connect
from lethe.errors import LetheError
from lethe.operations.home import Home

PREFIX = "kh_"
HEX_DIGITS = 32
PATTERN = f"{PREFIX}[0-9a-f]{{{HEX_DIGITS}}}"
MACRO = "lethe_key_hash"
VAULT_FILE = "vault.duckdb"
_BLOCK = 64  # SHA-256 block size: HMAC pads the secret to it
_PADS = ("lethe.key_ipad", "lethe.key_opad")  # PostgreSQL settings holding the pads (hex)
# `lethe_key_hash({k})` in PostgreSQL's SQL: the same HMAC, its pads from `_PADS`.
POSTGRES_HASH = (
    f"CASE WHEN {{k}} ~ '^{PATTERN}$' THEN {{k}} ELSE '{PREFIX}' || left(encode(sha256("
    f"decode(current_setting('{_PADS[1]}'), 'hex') || sha256(decode(current_setting("
    f"'{_PADS[0]}'), 'hex') || convert_to({{k}}, 'UTF8'))), 'hex'), {HEX_DIGITS}) END"
)
# Secrets read per vault file in this process: the vault cannot be opened a second time
# while a connection of this process attaches it.
_SECRETS: dict[Path, bytes] = {}


class KeyHashError(LetheError):
    """The secret of the keyed hash cannot be found or created."""


def key_hash(secret: bytes, key: str) -> str:
    """The keyed hash of one key (what `lethe_key_hash` computes in SQL); a hash stays as it is."""
    if is_hash(key):
        return key
    digest = hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()
    return PREFIX + digest[:HEX_DIGITS]


def is_hash(value: str) -> bool:
    """Whether `value` is a keyed hash (not a raw key)."""
    return (
        len(value) == len(PREFIX) + HEX_DIGITS
        and value.startswith(PREFIX)
        and all(c in "0123456789abcdef" for c in value[len(PREFIX) :])
    )


def is_hash_sql(expr: str) -> str:
    """SQL: whether the text `expr` is a keyed hash."""
    return f"regexp_full_match({expr}, '{PATTERN}')"


def short(value: str) -> str:
    """A keyed hash shortened for display (`kh_3f9a1c2b…`); a raw key as it is."""
    return value[: len(PREFIX) + 8] + "…" if is_hash(value) else value


def read_secret(vault: Path) -> bytes:
    """The secret kept in the vault file `vault`, created there on first use."""
    path = vault.resolve()
    if path not in _SECRETS:
        if path.name != VAULT_FILE:
            raise KeyHashError(f"{path}: the key secret lives in {VAULT_FILE}")
        con = connect(path)
        try:
            ensure_vault(con)
            _SECRETS[path] = _secret_in(con, path.stem)
        finally:
            con.close()
    return _SECRETS[path]


def vault_attached(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether a vault (a file, or a mirror in memory) is attached to `con` AS vault."""
    return bool(
        con.execute("SELECT 1 FROM duckdb_databases() WHERE database_name = 'vault'").fetchall()
    )


def secret_for(con: duckdb.DuckDBPyConnection) -> bytes:
    """The secret of the vault of `con`'s warehouse: the vault attached to `con` AS vault,
    else the vault of the warehouse file (`vault_of`)."""
    attached = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = 'vault'"
    ).fetchall()
    if attached and attached[0][0] is None:
        # A vault in memory: the mirror of a PostgreSQL warehouse's vault schema holds the
        # secret in its own `key_secret` table (lethe.rights.postgres_requests).
        return _secret_in(con, "vault")
    if attached:
        path = Path(attached[0][0]).resolve()
        if path not in _SECRETS:
            _SECRETS[path] = _secret_in(con, "vault")
        return _SECRETS[path]
    current = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()
    if not current or not current[0][0]:
        raise KeyHashError("keys are hashed with the vault's secret: the warehouse has no file")
    return read_secret(vault_of(Path(current[0][0]).resolve()))


def vault_of(warehouse: Path) -> Path:
    """The vault of a warehouse file or of a scratch copy beside it: vault.duckdb beside it,
    or LETHE_HOME's when LETHE_WAREHOUSE keeps the warehouse in another folder."""
    home = Home.from_env()
    if home.warehouse_file is not None and warehouse.parent == home.warehouse_file.parent:
        return home.vault
    return warehouse.with_name(VAULT_FILE)


def bind(con: duckdb.DuckDBPyConnection, secret: bytes | None = None) -> None:
    """Define `lethe_key_hash(text)` on `con`, with `secret` (default: `secret_for(con)`).

    Cheap and idempotent; call it before each statement batch that hashes (a rolled-back
    transaction drops the macro again).
    """
    ipad, opad = _pads(secret if secret is not None else secret_for(con))
    con.execute("SET VARIABLE lethe_key_ipad = ?", [ipad])
    con.execute("SET VARIABLE lethe_key_opad = ?", [opad])
    hmac_sql = (
        "sha256(getvariable('lethe_key_opad')"
        " || unhex(sha256(getvariable('lethe_key_ipad') || encode(k))))"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP MACRO {MACRO}(k) AS CASE WHEN {is_hash_sql('k')} THEN k"
        f" ELSE '{PREFIX}' || left({hmac_sql}, {HEX_DIGITS}) END"
    )


def bind_postgres(pg: Any, secret: bytes) -> None:
    """Set the pads `POSTGRES_HASH` reads on the PostgreSQL connection `pg` (a psycopg
    connection), for the current transaction only: in memory, never in a table."""
    ipad, opad = _pads(secret)
    pg.execute(
        "SELECT set_config(%s, %s, true), set_config(%s, %s, true)",
        [_PADS[0], ipad.hex(), _PADS[1], opad.hex()],
    )


def _pads(secret: bytes) -> tuple[bytes, bytes]:
    """HMAC's inner and outer pads of `secret`."""
    padded = secret.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)


def _secret_in(con: duckdb.DuckDBPyConnection, catalog: str) -> bytes:
    """Read the secret from the vault catalog `catalog` of `con`, creating it if missing."""
    table = f"{catalog}.key_secret"
    rows = con.execute(f"SELECT secret FROM {table}").fetchall()
    if not rows:
        con.execute(
            f"INSERT INTO {table} SELECT ?, now() WHERE NOT EXISTS (SELECT 1 FROM {table})",
            [secrets.token_bytes(32)],
        )
        rows = con.execute(f"SELECT secret FROM {table}").fetchall()
    return bytes(rows[0][0])
