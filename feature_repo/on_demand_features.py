from typing import Any

from data_sources import transaction_request
from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String
from features import customer_activity_fv, customer_profile_fv, merchant_profile_fv


# Features of the transaction itself, relative to the customer's history; python mode keeps online reads cheap.
# Feast ships the function's source alone, so its imports and constants live inside it.
@on_demand_feature_view(
    sources=[transaction_request, customer_activity_fv, customer_profile_fv, merchant_profile_fv],
    schema=[
        Field(name="channel", dtype=String),
        Field(name="log_amount", dtype=Float64),
        Field(name="amount_to_mean_7d", dtype=Float64),
        Field(name="hour_of_day", dtype=Int64),
        Field(name="is_night", dtype=Int64),
        Field(name="seconds_since_last_txn", dtype=Float64),
        Field(name="account_age_days", dtype=Float64),
        Field(name="is_foreign_merchant", dtype=Int64),
    ],
    mode="python",
)
def transaction_request_features(inputs: dict[str, Any]) -> dict[str, Any]:
    import math

    night_hours = {0, 1, 2, 3, 4, 5}
    out: dict[str, list[Any]] = {
        name: []
        for name in (
            "channel",
            "log_amount",
            "amount_to_mean_7d",
            "hour_of_day",
            "is_night",
            "seconds_since_last_txn",
            "account_age_days",
            "is_foreign_merchant",
        )
    }
    for amount, channel, unix, mean_7d, last_unix, created, home, region in zip(
        inputs["amount"],
        inputs["channel"],
        inputs["transaction_unix"],
        inputs["amount_mean_7d"],
        inputs["last_txn_unix"],
        inputs["account_created_unix"],
        inputs["home_region"],
        inputs["merchant_region"],
        strict=True,
    ):
        hour = (unix // 3600) % 24
        out["channel"].append(channel)
        out["log_amount"].append(math.log1p(max(amount, 0.0)))
        # Missing history (a new customer) reads as "typical": ratio 1, no gap known.
        out["amount_to_mean_7d"].append(amount / mean_7d if mean_7d else 1.0)
        out["hour_of_day"].append(hour)
        out["is_night"].append(int(hour in night_hours))
        out["seconds_since_last_txn"].append(float(unix - last_unix) if last_unix else -1.0)
        out["account_age_days"].append((unix - created) / 86400.0 if created else -1.0)
        out["is_foreign_merchant"].append(int(home is not None and region is not None and home != region))
    return out
