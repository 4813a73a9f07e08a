"""prometheus_client: a batch of observations added to a histogram with one write per bucket.

prometheus_client has no bulk observe, and in BentoML's multiprocess mode each ``Histogram.observe`` is two
writes to a memory-mapped file, which add up over a batch (figures: docs/architecture.md). ``observe_many``
adds the batch the way ``observe`` adds one value (to the first bucket whose upper bound holds it, and to the
sum), through these internals of prometheus_client 0.24.1's ``Histogram``: ``_raise_if_not_observable()``,
``_upper_bounds`` (the sorted bounds, ``+Inf`` last), ``_buckets`` (one value per bound, non-cumulative) and
``_sum``.

Nothing is patched. Used by ``services/scorer/metrics.py`` for the ``fraud_score`` histogram;
``tests/model_store/libraries/test_prometheus_client.py`` holds it to ``observe`` one value at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from model_store.libraries.versions import check_version

WRITTEN_FOR = "0.24.1"


@cache
def require_version() -> None:
    """Fail loudly unless prometheus_client is installed at ``WRITTEN_FOR`` (checked once per process)."""
    check_version("prometheus_client", WRITTEN_FOR, __name__)


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every ``v`` in ``values``, with one write per bucket and one to the sum."""
    require_version()
    import numpy as np

    histogram._raise_if_not_observable()
    bounds = histogram._upper_bounds
    bucket_of = np.searchsorted(bounds, values, side="left")
    for bucket, count in enumerate(np.bincount(bucket_of, minlength=len(bounds))):
        if count:
            histogram._buckets[bucket].inc(int(count))
    histogram._sum.inc(float(sum(values)))
