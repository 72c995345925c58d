"""The pending-requests sensor, evaluated with dagster.build_sensor_context on a real
LETHE_HOME (set through the environment)."""

from __future__ import annotations

import dagster as dg
import pytest
from conftest import write_landing_set
from request_cases import T, person

from lethe.declaration.schema import default_schema
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.rights.requests import record_request
from sensors.requests import pending_requests_sensor


def evaluate(cursor: str | None = None) -> tuple[object, str | None]:
    context = dg.build_sensor_context(cursor=cursor)
    result = pending_requests_sensor(context)
    return result, context.cursor


@pytest.fixture
def home_with_contacts(home: Home, warehouse) -> Home:
    write_landing_set(home.landing, contacts=[person("c-one"), person("c-two")])
    warehouse(T).close()
    return home


def test_no_warehouse_skips(home: Home) -> None:
    assert not home.warehouse.exists()
    result, cursor = evaluate()
    assert isinstance(result, dg.SkipReason)
    assert "no warehouse" in result.skip_message
    assert cursor is None


def test_no_pending_request_skips(home_with_contacts: Home) -> None:
    result, cursor = evaluate()
    assert isinstance(result, dg.SkipReason)
    assert result.skip_message == "no pending request"
    assert cursor is None


def test_pending_request_launches_once(home_with_contacts: Home) -> None:
    con = connect(home_with_contacts.warehouse)
    first = record_request(con, default_schema(), "access", "c-one")
    con.close()

    result, cursor = evaluate()
    assert isinstance(result, dg.RunRequest)
    assert result.run_key == first.request_id
    assert result.tags["lethe/trigger"] == "requests"
    assert cursor == first.request_id

    # the same pending set with the returned cursor: already launched
    again, same = evaluate(cursor)
    assert isinstance(again, dg.SkipReason)
    assert "already launched" in again.skip_message
    assert same == cursor

    # a new request changes the pending set: launched again
    con = connect(home_with_contacts.warehouse)
    second = record_request(con, default_schema(), "erasure", person("c-two")["email"])
    con.close()
    result, new_cursor = evaluate(cursor)
    assert isinstance(result, dg.RunRequest)
    assert result.run_key == ",".join(sorted([first.request_id, second.request_id]))
    assert new_cursor == result.run_key

    # once the requests are done, nothing is pending
    con = connect(home_with_contacts.warehouse)
    con.execute("UPDATE requests.requests SET status = 'done'")
    con.close()
    result, _ = evaluate(new_cursor)
    assert isinstance(result, dg.SkipReason)
    assert result.skip_message == "no pending request"


def test_busy_warehouse_skips(home_with_contacts: Home) -> None:
    con = connect(home_with_contacts.warehouse)
    try:
        record_request(con, default_schema(), "access", "c-one")
        result, cursor = evaluate()  # a writer holds the file in this process
    finally:
        con.close()
    assert isinstance(result, dg.SkipReason)
    assert "busy" in result.skip_message
    assert cursor is None
    result, _ = evaluate()
    assert isinstance(result, dg.RunRequest)


def test_sensor_targets_the_pipeline_job() -> None:
    assert pending_requests_sensor.job_name == "lethe_pipeline"
    assert pending_requests_sensor.default_status == dg.DefaultSensorStatus.RUNNING
