"""Compliance assets: the record of processing, processors, breaches and the re-consent list."""

import datetime as dt
from collections.abc import Sequence
from typing import Any

import dagster as dg

from assets.enforcement import ENFORCEMENT
from assets.metadata import (
    OWNERS,
    ColumnInfo,
    compliance_metadata,
    compliance_tags,
    core_key,
    lineage_metadata,
)
from lethe.compliance import postgres_processors
from lethe.compliance.breaches import list_breaches
from lethe.compliance.consent_health import build_consent_health, consent_purposes
from lethe.compliance.processing_record import publish_record, render_markdown
from lethe.compliance.processors import review_processors
from lethe.declaration.policy import Policy
from pipelines.resources import PolicyResource, WarehouseResource

REFUSED_EXPORTS = "no_unassessed_refused_export"
OVERDUE_BREACHES = "no_overdue_breach_notification"
PROCESSORS = dg.AssetKey(["compliance", "processors"])
BREACHES = dg.AssetKey(["compliance", "breaches"])
_EVIDENCE = (
    "Kept as evidence of accountability (GDPR Art. 5(2)); holds names, times and counts,"
    " no data of data subjects."
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# The re-consent list's personal columns, found by data category in the subject table.
_CONSENT_COLUMNS = {
    "user.contact.email": "E-mail address to ask.",
    "user.name.first": "First name for the salutation.",
}


def _consent_columns(policy: Policy) -> list[tuple[ColumnInfo, list[tuple[dg.AssetKey, str]]]]:
    """The re-consent list's columns, each with the declared columns it comes from."""
    subject = policy.data_schema.subject_table
    out = []
    for category, description in _CONSENT_COLUMNS.items():
        column = next((c for c in subject.columns if c.category == category), None)
        if column:
            info = (column.name, "VARCHAR", category, description)
            out.append((info, [(core_key(subject.name), column.name)]))
    purposes = consent_purposes(policy)
    purpose = [
        (core_key(p.retention.table), c)
        for p in purposes
        for c in policy.purpose_columns(p.retention.table)
    ]
    segment = [
        (core_key(a.table), a.column)
        for p in purposes
        for a in (*p.retention.anchors, p.retention.ends_early_at)
        if a
    ]
    out.append(
        (("purpose", "VARCHAR", "user.privacy_preferences", "The purpose to ask about."), purpose)
    )
    out.append(
        (
            (
                "segment",
                "VARCHAR",
                "user.privacy_preferences",
                "consent_expiring (ends within the policy's window) or no_valid_consent.",
            ),
            segment,
        )
    )
    return [(info, list(dict.fromkeys(src))) for info, src in out]


def _consent_health_metadata(policy: Policy, consent: dict[str, str]) -> dict[str, Any]:
    columns = _consent_columns(policy)
    return {
        **compliance_metadata(
            consent,
            "Rewritten on every run after enforcement, so a data subject erased by a run is gone"
            " from the list after that run; holds e-mail and first name only.",
            [info for info, _ in columns],
        ),
        **lineage_metadata({info[0]: src for info, src in columns}),
    }


def compliance_assets(
    policy: Policy, analytics: Sequence[dg.AssetKey] = ()
) -> list[dg.AssetsDefinition]:
    """Processors, breaches, the record of processing (after the `analytics` datasets it
    lists) and the re-consent list, described with the policy's rules and schema."""
    consent = {p.name: p.legal_basis for p in consent_purposes(policy)}

    @dg.asset(
        key=PROCESSORS,
        group_name="compliance",
        deps=[ENFORCEMENT],  # after this run's erasures: exports holding erased rows go
        owners=OWNERS,
        kinds={"duckdb"},
        metadata=compliance_metadata(
            {p.purpose: policy.purposes[p.purpose].legal_basis for p in policy.processors},
            "Processor access ends with the contract (00:00 UTC of its end date) or at once with"
            " `lethe processor revoke`. " + _EVIDENCE,
        ),
        tags=compliance_tags(
            {p.purpose: policy.purposes[p.purpose].legal_basis for p in policy.processors}
        ),
        check_specs=[
            dg.AssetCheckSpec(
                REFUSED_EXPORTS,
                asset=PROCESSORS,
                description="No export to a processor was refused (contract ended, access revoked"
                " or not granted) without its breach record being assessed.",
            )
        ],
    )
    def processors(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
    ):
        """The processors (GDPR Art. 28) of the policy: purpose, data shared, contract end and
        whether they may receive exports now. Exports go through `lethe processor export`; one
        after the contract end or a revocation is refused, logged and opens a breach record.
        Export files past the export retention, or holding a row erased since, are deleted.
        """
        engine = warehouse.postgres()
        if engine is not None:
            report, _ = postgres_processors.review(engine, warehouse.paths(), policy.load(), _now())
        else:
            with warehouse.connect() as con:
                report = review_processors(con, warehouse.paths(), policy.load(), _now())
        rows = "\n".join(
            f"| {a.processor.name} | {a.processor.purpose} | {a.processor.contract_end or 'open'}"
            f" | {'yes' if a.allowed else 'no'}: {a.reason}"
            f" | {report.exports.get(a.processor.name, {}).get('export', 0)}"
            f" | {report.exports.get(a.processor.name, {}).get('refused', 0)} |"
            for a in report.access
        )
        open_refusals = report.open_refusals
        context.log.info(f"{len(report.access)} processors; {len(open_refusals)} open refusals")
        yield dg.MaterializeResult(
            metadata={
                "processors": dg.MetadataValue.md(
                    "| processor | purpose | contract end | access now | exports | refused |\n"
                    f"|---|---|---|---|---|---|\n{rows}"
                ),
                "with_access": sum(a.allowed for a in report.access),
                "refused_exports": len(report.refused),
                "export_files_deleted": report.expired_exports,
            }
        )
        yield dg.AssetCheckResult(
            check_name=REFUSED_EXPORTS,
            passed=not open_refusals,
            description="; ".join(
                f"{r.processor}: export refused {r.at:%Y-%m-%d %H:%M} UTC ({r.reason}),"
                f" breach {r.breach_id} to assess"
                for r in open_refusals
            )
            or "no refused export awaits assessment",
            metadata={"open_refusals": len(open_refusals)},
        )

    @dg.asset(
        key=BREACHES,
        group_name="compliance",
        owners=OWNERS,
        kinds={"duckdb"},
        metadata=compliance_metadata(
            {"breach_notification": "legal_obligation"},
            f"The authority is notified within {policy.breach_notification.authority_hours} h of"
            " becoming aware (GDPR Art. 33(1)); a processor notifies within"
            f" {policy.breach_notification.processor_hours} h (Art. 33(2), the processor"
            " agreements). Every breach stays documented (Art. 33(5)). " + _EVIDENCE,
        ),
        tags=compliance_tags({"breach_notification": "legal_obligation"}),
        check_specs=[
            dg.AssetCheckSpec(
                OVERDUE_BREACHES,
                asset=BREACHES,
                description="No breach is past its notification deadline: 72 h to the authority,"
                " 48 h from a processor (hours from the policy).",
            )
        ],
    )
    def breaches(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        """The breach register (audit.breaches): each personal data breach with the time the
        controller became aware, the notification deadlines and whether they were met. Record
        with `lethe breach record`, then `lethe breach notified` or `lethe breach close`.
        """
        now = _now()
        engine = warehouse.postgres()
        if engine is not None:
            register = postgres_processors.register(engine)
        else:
            with warehouse.connect() as con:
                register = list_breaches(con)
        overdue = [(b, late) for b in register if (late := b.overdue(now))]
        rows = "\n".join(
            f"| {b.breach_id} | {b.source} | {b.processor or ''} | {b.aware_at:%Y-%m-%d %H:%M}"
            f" | {b.authority_deadline:%Y-%m-%d %H:%M} | {'open' if b.open else 'done'} |"
            for b in register
            if b.open or b.awaiting_processor
        )
        context.log.info(f"{len(register)} breaches; {len(overdue)} overdue")
        yield dg.MaterializeResult(
            metadata={
                "recorded": len(register),
                "open": sum(b.open for b in register),
                "overdue": len(overdue),
                "open_breaches": dg.MetadataValue.md(
                    "| breach | source | processor | aware (UTC) | authority deadline | status |\n"
                    f"|---|---|---|---|---|---|\n{rows}"
                ),
            }
        )
        yield dg.AssetCheckResult(
            check_name=OVERDUE_BREACHES,
            passed=not overdue,
            description="; ".join(f"{b.breach_id}: {', '.join(late)}" for b, late in overdue)
            or "no notification overdue",
            metadata={"overdue": len(overdue)},
        )

    @dg.asset(
        key=["compliance", "record_of_processing"],
        group_name="compliance",
        deps=[ENFORCEMENT, PROCESSORS, BREACHES, *analytics],
        owners=OWNERS,
        kinds={"duckdb", "html", "json"},
        metadata=compliance_metadata(
            {"accountability": "legal_obligation"},
            "Regenerated on every run from the policy and the warehouse (GDPR Art. 30); holds"
            " counts only, no personal data.",
        ),
        tags=compliance_tags({"accountability": "legal_obligation"}),
    )
    def record_of_processing(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
    ) -> dg.MaterializeResult:
        """The record of processing activities (GDPR Art. 30): controller, purposes, legal
        bases, categories of data subjects and data, recipients and processors, transfers,
        retention, security measures and live counts, as JSON, Markdown and HTML under
        exports/compliance.
        """
        with warehouse.connect() as con:
            record, paths = publish_record(
                con, warehouse.paths(), policy.load(), policy.as_of_date(), _now()
            )
        context.log.info(f"record of processing written to {paths['html']}")
        return dg.MaterializeResult(
            metadata={
                "activities": len(record["activities"]),
                "processors": len(record["processors"]),
                **{f"{fmt}_file": dg.MetadataValue.path(str(p)) for fmt, p in paths.items()},
                "record": dg.MetadataValue.md(render_markdown(record)),
            }
        )

    @dg.asset(
        key=["compliance", "consent_health"],
        group_name="compliance",
        deps=[ENFORCEMENT, *{k for _, src in _consent_columns(policy) for k, _ in src}],
        owners=OWNERS,
        kinds={"duckdb", "csv"},
        metadata=_consent_health_metadata(policy, consent),
        tags=compliance_tags(consent),
        description=(
            "The re-consent list (exports/compliance/consent_health.csv): data subjects kept"
            " for another purpose without a valid consent (never withdrawn), and consents"
            f" ending within {policy.consent_health.expiring_within}, with e-mail and first"
            " name only; restricted, anonymized and held data subjects never appear."
        ),
    )
    def consent_health(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
    ) -> dg.MaterializeResult:
        with warehouse.connect() as con:
            result = build_consent_health(
                con, warehouse.paths(), policy.load(), policy.as_of_date()
            )
        context.log.info(f"re-consent list: {result.counts}")
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": sum(result.counts.values()),
                **result.counts,
                "file": dg.MetadataValue.path(str(result.path)),
            }
        )

    return [processors, breaches, record_of_processing, consent_health]
