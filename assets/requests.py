"""Data-subject request assets: carried out before tagging, answered after enforcement."""

import dagster as dg

from assets.enforcement import ENFORCEMENT
from assets.metadata import OWNERS, ingest_key
from lethe.declaration.policy import Policy
from lethe.rights import postgres_requests
from lethe.rights.answers import answer_pending
from lethe.rights.requests import apply_pending, request_counts
from lethe.sources import postgres_propagation
from lethe.sources.propagation import (
    plan_erasures,
    plan_rectifications_and_restrictions,
    propagate,
)
from pipelines.resources import PolicyResource, WarehouseResource

NOTHING_OVERDUE = "no_overdue_requests"


@dg.asset(
    key=["requests", "answers"],
    # A group of its own: intake runs before tagging, answers after enforcement.
    group_name="answers",
    deps=[ENFORCEMENT],
    owners=OWNERS,
    kinds={"duckdb", "polars"},
    check_specs=[
        dg.AssetCheckSpec(
            NOTHING_OVERDUE,
            asset=["requests", "answers"],
            description="No data-subject request is past its deadline (one month, or three"
            " after a recorded extension).",
        )
    ],
)
def request_answers(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
):
    """Answers pending requests after the enforcement rewrite: access and portability
    exports (zip with JSON, CSV per table and an HTML summary under exports/requests, kept
    30 days), and erasure answers listing what is still kept, why and until when.
    """
    home, engine = warehouse.paths(), warehouse.postgres()
    loaded, as_of = policy.load(), policy.as_of_date()
    if engine is not None:
        carried = postgres_propagation.propagate(engine, loaded, context.run.run_id, as_of)
        answers = postgres_requests.answer(engine, home, loaded, as_of, context.run.run_id)
        counts = postgres_requests.counts(engine)
    else:
        with warehouse.connect() as con:
            carried = propagate(con, loaded, context.run.run_id, as_of)
            answers = answer_pending(con, home, loaded, as_of, context.run.run_id)
            counts = request_counts(con)
    for outcome in carried:
        # A source that refused keeps its requests pending; the next run retries.
        log = context.log.info if outcome.ok else context.log.warning
        log(f"source ${outcome.source}: {outcome.reason or 'changes carried back'}")
    context.log.info(f"{answers.exports} exports written, {answers.erasures} erasures answered")
    yield dg.MaterializeResult(
        metadata={
            "exports_written": answers.exports,
            "erasures_answered": answers.erasures,
            "open_requests": counts["open"],
            "done_requests": counts["done"],
            "overdue_requests": counts["overdue"],
            "sources_refusing": [o.reason for o in carried if not o.ok] or "none",
        }
    )
    yield dg.AssetCheckResult(
        check_name=NOTHING_OVERDUE,
        passed=counts["overdue"] == 0,
        description=f"{counts['overdue']} overdue requests (see `lethe requests --overdue`)"
        if counts["overdue"]
        else "no overdue request",
        metadata=counts,
    )


def request_assets(policy: Policy) -> list[dg.AssetsDefinition]:
    """Request intake (after every declared table is loaded) and the answers."""

    @dg.asset(
        key=["requests", "intake"],
        group_name="requests",
        deps=[ingest_key(t) for t in policy.data_schema.tables],
        owners=OWNERS,
        kinds={"duckdb"},
    )
    def request_intake(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
    ) -> dg.MaterializeResult:
        """Carries out every pending rectification (GDPR Art. 16: the value corrected in every
        table where it appears), objection (Art. 21: marketing consent treated as withdrawn
        now, evidence kept) and restriction (Art. 18: rows marked `restricted`), and registers
        pending erasures (Art. 17) so that this run's tagging and enforcement erase the subject.
        """
        loaded, as_of, vault = policy.load(), policy.as_of_date(), warehouse.paths().vault
        engine = warehouse.postgres()
        if engine is not None:
            done = postgres_requests.intake(engine, loaded, as_of, context.run.run_id)
        else:
            with warehouse.connect(defer_checkpoint=True) as con:
                # Source changes are planned from the requests as recorded and registered.
                plan_rectifications_and_restrictions(con, loaded)
                done = apply_pending(con, loaded, as_of, context.run.run_id, vault=vault)
                plan_erasures(con, loaded, as_of, vault)
        context.log.info("requests carried out: " + ", ".join(f"{k} {v}" for k, v in done.items()))
        return dg.MaterializeResult(metadata={f"{k}_requests": v for k, v in done.items()})

    return [request_intake, request_answers]
