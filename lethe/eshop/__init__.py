"""The default schema: a small Czech e-shop (contacts, consents, orders, shipments, holds)."""

from pathlib import Path

SCHEMA_FILE = Path(__file__).with_name("schema.yaml")
