"""Write the example shop's sample landing files (examples/shop/landing/).

The rows come from Lethe's synthetic e-shop generator (same seed, same rows); they are
written the way the shop's own system exports them, as `shop.schema.yaml` declares:
its table and column names, Czech headers, `;`-separated windows-1250 text, decimal
commas and `d.m.Y H:M` Prague wall-clock times. The e-shop's tables and the example's
are declared in the same order, column by column, so the mapping is positional.

    python examples/shop/make_sample.py [--contacts N] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import tempfile
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl

from lethe.declaration.schema import Table, default_schema, load_schema
from lethe.eshop.generate import generate

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "shop.schema.yaml"
REFERENCE = dt.date(2026, 1, 15)
UTC = ZoneInfo("UTC")


def _cell(value: object, column_type: str, table: Table, zone: ZoneInfo) -> str:
    """One value as the shop's export writes it."""
    if value is None:
        return ""
    formats = table.source.formats
    if column_type == "timestamp":
        local = value.replace(tzinfo=UTC).astimezone(zone)  # type: ignore[union-attr]
        return local.strftime(formats.timestamp or "%Y-%m-%d %H:%M:%S")
    if column_type == "date":
        return value.strftime(formats.date or "%Y-%m-%d")  # type: ignore[union-attr]
    if column_type == "decimal":
        return f"{value:.2f}".replace(".", table.source.csv.decimal)
    return str(value)


def write_sample(out: Path, contacts: int, seed: int = 7) -> dict[str, int]:
    """Generate `contacts` contacts and write them as the shop's files into `out`."""
    shop = load_schema(SCHEMA)
    zone = ZoneInfo(shop.timezone)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), contacts, seed=seed, reference=REFERENCE)
        pairs = zip(default_schema().tables.values(), shop.tables.values(), strict=True)
        for eshop, table in pairs:
            source = Path(tmp) / f"{eshop.name}.parquet"
            if not source.exists():
                continue
            frame = pl.read_parquet(source)
            dialect = table.source.csv
            path = out / f"{table.source.file}.csv"
            with path.open("w", encoding=dialect.encoding, newline="") as fh:
                writer = csv.writer(fh, delimiter=dialect.delimiter, quotechar=dialect.quote)
                writer.writerow([c.header for c in table.columns])
                columns = list(zip(eshop.columns, table.columns, strict=True))
                for row in frame.iter_rows(named=True):
                    writer.writerow([_cell(row[e.name], c.type, table, zone) for e, c in columns])
            counts[table.name] = frame.height
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=60)
    parser.add_argument("--out", type=Path, default=HERE / "landing")
    args = parser.parse_args()
    for table, rows in write_sample(args.out, args.contacts).items():
        print(f"{table}: {rows} rows")


if __name__ == "__main__":
    main()
