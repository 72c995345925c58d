"""The input tables Lethe knows: columns, types, keys, relations and data categories.

This is the contract of SPEC "Input tables". Everything else (ingest validation,
tagging joins, subject lookups, UI column schemas) is derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColumnType = Literal["text", "date", "timestamp", "decimal"]


@dataclass(frozen=True)
class Column:
    """One required input column."""

    name: str
    type: ColumnType
    category: str
    nullable: bool = True
    description: str = ""


@dataclass(frozen=True)
class ForeignKey:
    """`column` of this table references `ref_table.ref_column`."""

    column: str
    ref_table: str
    ref_column: str


@dataclass(frozen=True)
class Table:
    """An input table: its key, columns, relations and how it reaches its data subject."""

    name: str
    key: str
    columns: tuple[Column, ...]
    description: str
    foreign_keys: tuple[ForeignKey, ...] = ()
    optional: bool = False
    # Column (of this table or, for shipments, of the referenced order) holding the contact_id.
    subject_column: str = "contact_id"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")


def _c(
    name: str, type_: ColumnType, category: str, nullable: bool = True, desc: str = ""
) -> Column:
    return Column(name, type_, category, nullable, desc)


CONTACTS = Table(
    name="contacts",
    key="contact_id",
    description="Customers and prospects: identity, contact details and address.",
    columns=(
        _c("contact_id", "text", "identifier.contact", False, "Unique contact id"),
        _c("email", "text", "contact.email"),
        _c("phone", "text", "contact.phone"),
        _c("first_name", "text", "identity.name"),
        _c("last_name", "text", "identity.name"),
        _c("street", "text", "contact.address"),
        _c("city", "text", "contact.address"),
        _c("postal_code", "text", "contact.address.postal_code"),
        _c("country", "text", "contact.address.country"),
        _c("birth_date", "date", "identity.birth_date"),
        _c("created_at", "timestamp", "system.timestamp", False),
        _c("last_active_at", "timestamp", "system.timestamp"),
    ),
)

CONSENTS = Table(
    name="consents",
    key="consent_id",
    description="Consents given by contacts, with the evidence of how they were given.",
    foreign_keys=(ForeignKey("contact_id", "contacts", "contact_id"),),
    columns=(
        _c("consent_id", "text", "identifier.consent", False),
        _c("contact_id", "text", "identifier.contact", False),
        _c("purpose", "text", "consent.purpose", False),
        _c("granted_at", "timestamp", "consent.evidence", False),
        _c("withdrawn_at", "timestamp", "consent.evidence"),
        _c("ip_address", "text", "consent.evidence.ip_address"),
        _c("method", "text", "consent.evidence"),
        _c("wording", "text", "consent.evidence"),
    ),
)

ORDERS = Table(
    name="orders",
    key="order_id",
    description="Purchase contracts and their invoices.",
    foreign_keys=(ForeignKey("contact_id", "contacts", "contact_id"),),
    columns=(
        _c("order_id", "text", "identifier.order", False),
        _c("contact_id", "text", "identifier.contact", False),
        _c("ordered_at", "timestamp", "financial.transaction", False),
        _c("completed_at", "timestamp", "financial.transaction"),
        _c("invoice_number", "text", "financial.invoice"),
        _c("total_amount", "decimal", "financial.amount"),
        _c("currency", "text", "financial.amount"),
        _c("billing_name", "text", "identity.name"),
        _c("billing_street", "text", "contact.address"),
        _c("billing_city", "text", "contact.address"),
        _c("billing_postal_code", "text", "contact.address.postal_code"),
        _c("billing_country", "text", "contact.address.country"),
    ),
)

SHIPMENTS = Table(
    name="shipments",
    key="shipment_id",
    description="Deliveries of orders by carriers.",
    foreign_keys=(ForeignKey("order_id", "orders", "order_id"),),
    subject_column="orders.contact_id",
    columns=(
        _c("shipment_id", "text", "identifier.shipment", False),
        _c("order_id", "text", "identifier.order", False),
        _c("carrier", "text", "logistics.carrier"),
        _c("tracking_number", "text", "logistics.tracking"),
        _c("recipient_name", "text", "identity.name"),
        _c("recipient_phone", "text", "contact.phone"),
        _c("street", "text", "contact.address"),
        _c("city", "text", "contact.address"),
        _c("postal_code", "text", "contact.address.postal_code"),
        _c("country", "text", "contact.address.country"),
        _c("shipped_at", "timestamp", "logistics.timestamp"),
        _c("delivered_at", "timestamp", "logistics.timestamp"),
    ),
)

HOLDS = Table(
    name="holds",
    key="hold_id",
    description="Litigation holds: a contact's data is frozen while a hold is open.",
    foreign_keys=(ForeignKey("contact_id", "contacts", "contact_id"),),
    optional=True,
    columns=(
        _c("hold_id", "text", "identifier.hold", False),
        _c("contact_id", "text", "identifier.contact", False),
        _c("reason", "text", "legal.reason"),
        _c("placed_at", "timestamp", "legal.timestamp", False),
        _c("released_at", "timestamp", "legal.timestamp"),
    ),
)

# Load order matters: referenced tables come first.
TABLES: dict[str, Table] = {t.name: t for t in (CONTACTS, CONSENTS, ORDERS, SHIPMENTS, HOLDS)}
TAGGED_TABLES: tuple[str, ...] = ("contacts", "consents", "orders", "shipments")
