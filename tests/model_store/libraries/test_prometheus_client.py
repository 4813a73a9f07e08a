"""A batch added with ``observe_many`` leaves a histogram exactly as ``observe`` one value at a time does."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from model_store.libraries import prometheus_client, versions

BUCKETS = (0.01, 0.1, 0.5, 0.9, 1.0)


def samples(registry: CollectorRegistry) -> dict[str, float]:
    lines = generate_latest(registry).decode().splitlines()
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in lines)
        if not name.startswith("#") and "_created" not in name
    }


def test_observe_many_fills_buckets_count_and_sum_as_observe_does() -> None:
    rng = np.random.default_rng(5)
    # On the bounds, between them, beyond the last one (+Inf), negative, and a spread.
    values = [0.0, 0.01, 0.0100001, 0.5, 1.0, 1.5, -0.2, *rng.random(300).tolist()]
    bulk, single = CollectorRegistry(), CollectorRegistry()
    bulk_histogram = Histogram("h", "bulk", buckets=BUCKETS, registry=bulk)
    single_histogram = Histogram("h", "single", buckets=BUCKETS, registry=single)

    prometheus_client.observe_many(bulk_histogram, values)
    for value in values:
        single_histogram.observe(value)

    got, expected = samples(bulk), samples(single)
    # The same numbers added in another order: the sums may differ in the last bits.
    assert got.pop("h_sum") == pytest.approx(expected.pop("h_sum"), rel=1e-12)
    assert got == expected and got["h_count"] == len(values)


def test_a_labelled_parent_refuses_as_observe_does() -> None:
    histogram = Histogram(
        "h", "labelled", labelnames=["model"], buckets=BUCKETS, registry=CollectorRegistry()
    )
    with pytest.raises(ValueError, match="missing label values"):
        histogram.observe(0.5)
    with pytest.raises(ValueError, match="missing label values"):
        prometheus_client.observe_many(histogram, [0.5])


def test_another_prometheus_client_version_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    prometheus_client.require_version.cache_clear()
    monkeypatch.setattr(versions, "installed_version", lambda name: "1.0.0")
    histogram = Histogram("h", "h", buckets=BUCKETS, registry=CollectorRegistry())
    try:
        with pytest.raises(versions.LibraryVersionError, match=r"prometheus_client 0\.24\.1, but .* 1\.0\.0"):
            prometheus_client.observe_many(histogram, [0.5])
    finally:
        prometheus_client.require_version.cache_clear()
