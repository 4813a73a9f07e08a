from feast import FeatureService
from features import (
    customer_activity_fv,
    customer_profile_fv,
    merchant_activity_fv,
    merchant_profile_fv,
    merchant_risk_fv,
)
from on_demand_features import transaction_request_features

# Exactly what the fraud model reads, online and offline. A new feature set is a new version.
fraud_scorer_v1 = FeatureService(
    name="fraud_scorer_v1",
    features=[
        customer_activity_fv[
            [
                "txn_count_1h",
                "txn_count_24h",
                "txn_count_7d",
                "amount_sum_1h",
                "amount_sum_24h",
                "amount_sum_7d",
                "amount_mean_1h",
                "amount_mean_24h",
                "amount_mean_7d",
                "distinct_merchants_24h",
                "seconds_since_prev_txn",
            ]
        ],
        customer_profile_fv[["home_region", "card_type", "credit_limit"]],
        merchant_activity_fv,
        merchant_risk_fv,
        merchant_profile_fv[["merchant_category"]],
        transaction_request_features,
    ],
    description="Features of the real-time card fraud scorer.",
    tags={"model": "fraud_scorer"},
)
