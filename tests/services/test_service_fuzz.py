"""Schema-driven fuzzing of /score and /score_batch: schemathesis generates requests from the service's own
``/docs.json``, valid ones (positive) and ones that break it (negative), and checks every answer against it:
never a 5xx, only documented statuses, bodies and headers as documented, bad input refused with a 4xx that
names the field.

In-process, through the same ASGI client as the other service tests, with an API key so 401 is covered too.
Bounded and derandomized: the same examples on every run, a few seconds in ``make test``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.formats import unregister_string_format

from tests.services.conftest import scorer_client

if TYPE_CHECKING:
    from starlette.testclient import TestClient

KEY = "fuzz-test-key"
EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 60}


@pytest.fixture(scope="module")
def client(served_env: dict[str, str]) -> Iterator[TestClient]:
    with scorer_client(served_env, api_key=KEY) as test_client:
        yield test_client


def plausible_times() -> st.SearchStrategy[str]:
    """RFC 3339 date-times (any offset, any fraction of a second) between 2001 and three days ago.

    The service refuses transactions from before 2000 or from the future, which no JSON Schema keyword can
    say: with schemathesis' own date-times (years 0001-9999), valid-looking requests would get 422 and the
    positive fuzzing would report the service rejecting valid data.
    """
    dates = st.dates(date(2001, 1, 1), date.today() - timedelta(days=3)).map(str)
    times = st.times().map(lambda moment: moment.isoformat())
    minutes = st.integers(-(23 * 60 + 59), 23 * 60 + 59)
    offsets = minutes.map(
        lambda m: "Z" if m == 0 else f"{'+' if m > 0 else '-'}{abs(m) // 60:02d}:{abs(m) % 60:02d}"
    )
    return st.builds("{}T{}{}".format, dates, times, offsets)


@pytest.fixture(scope="module")
def api(client: TestClient) -> Iterator[schemathesis.BaseSchema]:
    schemathesis.openapi.format("date-time", plausible_times())
    # ignored_auth re-sends each request without the key over its own connection, which reaches no server
    # in-process (schemathesis' ASGI transport would start a second service); test_service_auth.py covers it.
    config = schemathesis.Config.from_dict({"checks": {"ignored_auth": {"enabled": False}}})
    yield schemathesis.openapi.from_dict(client.get("/docs.json").json(), config=config)
    unregister_string_format("date-time")  # schemathesis' own strategy again


def refusals_name_the_field(ctx: schemathesis.CheckContext, response: Any, case: schemathesis.Case) -> None:
    """Bad input gets a 4xx whose details name each field at fault and why."""
    if 400 <= response.status_code < 500:
        details = response.json().get("details") or []
        assert details and all(d["field"] and d["reason"] for d in details), response.text


def send(client: TestClient, case: schemathesis.Case) -> Any:
    """The case as schemathesis would send it with requests, sent through the in-process client."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    body = {"json": kwargs["json"]} if "json" in kwargs else {"content": kwargs.get("data")}
    return client.request(
        kwargs["method"], kwargs["url"], headers=kwargs["headers"], params=kwargs.get("params"), **body
    )


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda mode: mode.value)
@pytest.mark.parametrize("path", ["/score", "/score_batch"])
def test_fuzzed_requests_get_documented_answers_and_never_a_5xx(
    client: TestClient, api: schemathesis.BaseSchema, path: str, mode: GenerationMode
) -> None:
    operation = api[path]["POST"]

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=operation.as_strategy(generation_mode=mode, headers={"X-API-Key": KEY}))
    def fuzz(case: schemathesis.Case) -> None:
        case.validate_response(send(client, case), additional_checks=[refusals_name_the_field])

    fuzz()
