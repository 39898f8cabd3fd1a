"""ElasticLoader with the official client over HTTP against the local stand-in (es_server.py)."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from elasticsearch import Elasticsearch

from kpi_pipeline.adapters.flywheel.loaders.to_elastic import (
    ElasticLoader,
    ElasticLoadError,
    index_template,
)
from kpi_pipeline.core.flywheel.records import record_id
from kpi_pipeline_tests.support.es_server import ElasticStandIn
from kpi_pipeline_tests.support.flywheel import make_record, spaced_records


def _day_of_records(count: int = 120) -> list[dict]:
    return spaced_records(count, timedelta(seconds=700))


def _loader(es: ElasticStandIn, **kwargs: object) -> ElasticLoader:
    return ElasticLoader(es.url, initial_backoff=0.01, max_backoff=0.05, **kwargs)


def test_template_is_sent_with_the_explicit_mappings(es: ElasticStandIn) -> None:
    _loader(es).ensure_index_template()
    template = es.state.templates["kpi-pipeline-flywheel"]
    assert template["index_patterns"] == ["flywheel"]
    mappings = template["template"]["mappings"]
    assert mappings["dynamic"] == "strict"
    assert mappings["properties"]["timestamp"] == {"type": "date", "format": "epoch_second"}
    assert mappings["properties"]["workload_id"] == {"type": "keyword"}
    assert mappings["properties"]["client_id"] == {"type": "keyword"}
    for name in ("request", "response"):
        assert mappings["properties"][name]["type"] == "object"
        assert mappings["properties"][name]["dynamic"] is False
    assert set(mappings["properties"]) == {
        "timestamp",
        "workload_id",
        "client_id",
        "request",
        "response",
    }


def test_client_speaks_the_9x_compatibility_headers(es: ElasticStandIn) -> None:
    _loader(es).ensure_index_template()
    method, path, headers = es.state.requests[0]
    assert (method, path) == ("PUT", "/_index_template/kpi-pipeline-flywheel")
    assert headers["accept"] == "application/vnd.elasticsearch+json; compatible-with=9"


def test_load_a_day_then_reload_adds_nothing(es: ElasticStandIn) -> None:
    loader = _loader(es)
    loader.ensure_index_template()
    records = _day_of_records()
    first = loader.load(records, refresh=True)
    assert (first.attempted, first.created, first.already_present, first.failed) == (
        120,
        120,
        0,
        [],
    )
    assert loader.count() == 120
    second = loader.load(records)
    assert (second.created, second.already_present, second.indexed, second.failed) == (
        0,
        120,
        120,
        [],
    )
    assert loader.count() == 120
    stored = es.state.indices["flywheel"].docs[record_id(records[0])]
    assert stored == records[0]
    # The index was auto-created from our template, so the strict mapping applies.
    assert (
        es.state.indices["flywheel"].mappings == index_template("flywheel")["template"]["mappings"]
    )


def test_bulk_requests_are_chunked(es: ElasticStandIn) -> None:
    loader = _loader(es, chunk_size=50)
    report = loader.load(_day_of_records())
    assert report.created == 120 and es.state.bulk_requests == 3


def test_rejected_items_and_failed_requests_are_retried(es: ElasticStandIn) -> None:
    records = _day_of_records(10)
    es.state.fail_bulk_requests = [503]  # whole request: node not ready
    es.state.fail_items = {record_id(records[3]): [429, 429], record_id(records[7]): [502]}
    report = _loader(es).load(records)
    assert (report.created, report.failed) == (10, [])
    assert es.state.bulk_requests == 4  # 503, then all, then 2 items, then 1 item
    assert len(es.state.indices["flywheel"].docs) == 10


def test_failures_are_reported_with_id_status_and_reason(es: ElasticStandIn) -> None:
    records = _day_of_records(6)
    permanent, throttled = record_id(records[1]), record_id(records[4])
    es.state.fail_items = {permanent: [400], throttled: [429] * 10}
    invalid = make_record(99)
    invalid["response"]["created"] = invalid["response"]["created"] * 1000
    report = _loader(es, max_retries=2).load([*records, invalid])
    assert report.created == 4 and report.attempted == 6
    by_id = {f.record_id: f for f in report.failed}
    assert set(by_id) == {permanent, throttled, record_id(invalid)}
    assert (by_id[permanent].status, by_id[permanent].error_type) == (
        400,
        "illegal_state_exception",
    )
    assert (by_id[throttled].status, by_id[throttled].error_type) == (
        429,
        "es_rejected_execution_exception",
    )
    assert by_id[record_id(invalid)].status is None
    assert "epoch milliseconds" in by_id[record_id(invalid)].reason
    assert record_id(invalid) not in es.state.indices["flywheel"].docs  # never sent
    assert not report.ok


def test_whole_request_failing_after_retries_is_reported_per_record(es: ElasticStandIn) -> None:
    es.state.fail_bulk_requests = [503] * 5
    report = _loader(es, max_retries=2).load(_day_of_records(4))
    assert report.created == 0
    assert [f.status for f in report.failed] == [503] * 4
    assert all(f.error_type == "request_failed" for f in report.failed)


def test_existing_index_with_default_date_mapping_is_refused(es: ElasticStandIn) -> None:
    upstream_style = {"dynamic": "strict", "properties": {"timestamp": {"type": "date"}}}
    Elasticsearch(es.url).indices.create(index="flywheel", mappings=upstream_style)
    with pytest.raises(
        ElasticLoadError, match=r"already exists with other mappings.*timestamp is mapped"
    ):
        _loader(es).ensure_index_template()


def test_template_is_idempotent_and_accepts_its_own_index(es: ElasticStandIn) -> None:
    loader = _loader(es)
    loader.ensure_index_template()
    loader.load(_day_of_records(3))
    loader.ensure_index_template()  # index now exists with our mapping: accepted
    assert len(es.state.templates) == 1


def test_unreachable_server_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    loader = ElasticLoader(f"http://127.0.0.1:{port}", initial_backoff=0.01)
    with pytest.raises(
        ElasticLoadError, match=f"Elasticsearch http://127.0.0.1:{port}.*is the server up"
    ):
        loader.ensure_index_template()


def test_bad_index_name_and_missing_url_are_named() -> None:
    with pytest.raises(ValueError, match="index name 'Flywheel' is invalid"):
        ElasticLoader("http://127.0.0.1:9200", index="Flywheel")
    with pytest.raises(ValueError, match="needs an Elasticsearch url"):
        ElasticLoader(None)


def test_stand_in_enforces_the_strict_mapping_like_elasticsearch(es: ElasticStandIn) -> None:
    """Guards the stand-in itself: without this, the template assertions above would prove little."""
    _loader(es).ensure_index_template()
    client = Elasticsearch(es.url)
    record = make_record(1)
    result = client.bulk(
        operations=[{"create": {"_index": "flywheel", "_id": "x"}}, {**record, "lead_id": "00Q"}]
    )
    item = result["items"][0]["create"]
    assert (item["status"], item["error"]["type"]) == (400, "strict_dynamic_mapping_exception")


def test_template_put_is_retried_on_5xx_and_429(es: ElasticStandIn) -> None:
    es.state.fail_paths = {"PUT /_index_template/kpi-pipeline-flywheel": [503, 429]}
    _loader(es).ensure_index_template()
    puts = [r for r in es.state.requests if r[0] == "PUT"]
    assert len(puts) == 3 and "kpi-pipeline-flywheel" in es.state.templates


def test_template_put_failing_for_good_is_a_clear_error(es: ElasticStandIn) -> None:
    es.state.fail_paths = {"PUT /_index_template/kpi-pipeline-flywheel": [503] * 10}
    with pytest.raises(
        ElasticLoadError, match=r"could not put the index template on Elasticsearch .*HTTP 503"
    ):
        _loader(es, max_retries=2).ensure_index_template()
