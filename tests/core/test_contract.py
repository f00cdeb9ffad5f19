"""The cross-component contract: what the router and the dashboards read, the service writes."""

from __future__ import annotations

import hashlib

from prometheus_client.parser import text_string_to_metric_families

from inkwell import contract
from router import sources
from router.payload import peek
from service.metrics import ServiceMetrics


def exported_samples() -> set[str]:
    """Every sample name a freshly started service exposes, with the series the router reads."""
    metrics = ServiceMetrics("canary")
    metrics.confidence.labels("canary", "2").observe(0.9)
    metrics.cheque_reads.labels("canary", "2", "false").inc()
    metrics.cheque_confidence.labels("canary", "2").observe(0.8)
    metrics.cheque_reviewed.labels("canary", "2", "true").inc()
    metrics.model_info.labels("canary", "inkwell-digits", "2").set(1)
    text = metrics.render().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_service_exports_every_metric_the_contract_names() -> None:
    names = exported_samples()
    assert f"{contract.PREDICTION_CONFIDENCE}_count" in names
    assert f"{contract.CHEQUE_READS}_total" in names
    assert f"{contract.CHEQUE_CONFIDENCE}_sum" in names
    assert f"{contract.CHEQUE_REVIEWED}_total" in names
    assert {contract.MODEL_INFO, contract.READY} <= names


def test_every_service_series_the_router_scrapes_is_exported_by_the_service() -> None:
    names = exported_samples()
    read_from_service = [name for name in sources.COUNTERS if name.startswith("inkwell_service_")]
    assert read_from_service and set(read_from_service) <= names


def test_the_router_keys_images_by_the_contract_hash() -> None:
    image = b"\x89PNG\r\n\x1a\n not really a png"
    found = peek("image/png", image)
    assert found.image_key == contract.image_key(image) == hashlib.sha256(image).hexdigest()


def test_the_router_reads_every_contract_user_field_from_json() -> None:
    for field in contract.USER_FIELDS:
        assert peek("application/json", f'{{"{field}": "alice"}}'.encode()).user_id == "alice"
