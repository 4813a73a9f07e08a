"""Rotating the service's API key without downtime: while both keys are configured both work, and once the
old key is removed (and the service restarted, as a rollout does) it is refused. Each step is its own
in-process service: the ASGI app serves one instance at a time."""

from __future__ import annotations

from model_store.settings import Settings
from tests.services.conftest import known_ids, scorer_client, transaction

OLD_KEY = "rotation-old-7c1d"
NEW_KEY = "rotation-new-52ab"


def test_both_keys_work_during_a_rotation_and_a_removed_key_stops_after_a_restart(
    served_env: dict[str, str], served_settings: Settings
) -> None:
    customers, merchants = known_ids(served_settings)
    body = transaction(customers[0], merchants[0])
    # Step 1: the new key is added beside the old one; clients move to it at their pace.
    with scorer_client(served_env, api_keys=f"{NEW_KEY},{OLD_KEY}") as client:
        for key in (OLD_KEY, NEW_KEY):
            assert client.post("/score", json=body, headers={"X-API-Key": key}).status_code == 200, key
        assert client.post("/score", json=body, headers={"X-API-Key": "rotation-other"}).status_code == 401
        # One security scheme, whatever the number of keys: clients send one header.
        docs = client.get("/docs.json").json()
        assert docs["components"]["securitySchemes"] == {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        }
        assert docs["paths"]["/score"]["post"]["security"] == [{"ApiKey": []}]
    # Step 2: the old key is removed and the service restarted.
    with scorer_client(served_env, api_keys=NEW_KEY) as client:
        refused = client.post("/score", json=body, headers={"X-API-Key": OLD_KEY})
        assert refused.status_code == 401 and "fraud_probability" not in refused.text
        assert client.post("/score", json=body, headers={"X-API-Key": NEW_KEY}).status_code == 200
