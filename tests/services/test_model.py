"""The served model is the registry's champion: same identity, threshold and scores as offline scoring."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from model_store.registry import load_champion
from model_store.scorer import MISSING_CATEGORY, ModelContract, prepare_features
from model_store.settings import Settings
from services.scorer.model import (
    APPROVE,
    DECLINE,
    FEW_ROWS,
    ModelNotBuilt,
    ServingModel,
    load_serving_model,
    save_bento_model,
)
from tests.services.champion import TEST_THRESHOLD, online_feature_frame, sample_rows
from tests.services.conftest import known_ids


def test_served_model_scores_exactly_like_the_champion_offline(served_settings: Settings) -> None:
    champion = load_champion(served_settings)
    served = load_serving_model(served_settings)
    assert (served.name, served.version, served.threshold) == (
        champion.name,
        champion.version,
        TEST_THRESHOLD,
    )
    assert served.features == champion.features

    customers, merchants = known_ids(served_settings)
    # Known entities and unknown ones (null features: the model's defaults apply on both paths).
    rows = sample_rows(customers, merchants, 200, seed=3, now=int(time.time()))
    rows["customer_id"][:2] = [987_654_321, 987_654_322]
    rows["merchant_id"][1:3] = [876_543_210, 876_543_211]
    frame = online_feature_frame(served_settings, rows)
    assert frame["home_region"].isna().sum() == 2 and frame["merchant_category"].isna().sum() == 2
    columns = {c: [None if v is None or v != v else v for v in frame[c].tolist()] for c in frame.columns}

    served_scores = served.predict(columns)
    np.testing.assert_array_equal(served_scores, champion.score(frame))
    decisions = served.decide(served_scores)
    assert decisions == [DECLINE if s >= TEST_THRESHOLD else APPROVE for s in served_scores]
    assert {APPROVE, DECLINE} <= set(decisions), "the test model should both approve and decline"


def test_every_serving_path_reads_missing_values_as_training_does() -> None:
    """Rows with missing values get the same input, and so the same score, on each of the service's paths (a
    few rows, many rows, the model input it records) as through ``prepare_features``, which training uses: a
    default written a second time in the service would fail here."""
    from catboost import CatBoostClassifier

    rng = np.random.default_rng(0)
    n = 2 * FEW_ROWS + 1
    frame = pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 50.0, n),
            "kind": rng.choice(["a", "b", "c"], n).astype(object),
            "count": rng.integers(0, 5, n).astype(float),
        }
    )
    frame.loc[frame.index % 7 == 0, "amount"] = np.nan
    frame.loc[frame.index % 5 == 0, "kind"] = None
    # Missing values carry the signal, so a different default moves the scores.
    y = (frame["amount"].isna() | frame["kind"].isna()).astype(int).to_numpy()
    contract = ModelContract(
        decision_threshold=0.5,
        target_fpr=0.01,
        feature_service="test_service",
        features=["amount", "kind", "count"],
        categorical_features=["kind"],
    )
    offline = prepare_features(frame, contract.features, contract.categorical_features)
    assert MISSING_CATEGORY in set(offline["kind"]) and offline["amount"].isna().any()
    model = CatBoostClassifier(
        iterations=30, depth=3, thread_count=1, verbose=False, allow_writing_files=False
    )
    model.fit(offline, y, cat_features=contract.categorical_features)
    expected = model.predict_proba(offline)[:, 1]
    served = ServingModel(model, "test_model", "1", contract)
    # As the online store answers: a column per feature, None where it has no value.
    columns = {c: [None if pd.isna(v) else v for v in frame[c].tolist()] for c in contract.features}

    np.testing.assert_allclose(served.predict(columns), expected, rtol=0, atol=1e-12)
    few = {c: values[:3] for c, values in columns.items()}
    np.testing.assert_allclose(served.predict(few), expected[:3], rtol=0, atol=1e-12)
    # What the decision record keeps: row by row, in the contract's order, as the model read it.
    recorded = served.input_rows(columns)
    assert len(recorded) == n and all(list(row) == contract.features for row in recorded)
    np.testing.assert_array_equal([row["amount"] for row in recorded], offline["amount"].to_numpy())
    assert [row["kind"] for row in recorded] == offline["kind"].tolist()
    assert all(type(row["count"]) is float and type(row["kind"]) is str for row in recorded)
    # The explaining path scores from its own pool of rows and shows each reason's value as the model read it.
    explained, reasons = served.predict_and_explain(columns, top=3)
    np.testing.assert_allclose(explained, expected, rtol=0, atol=1e-12)
    for i, row in enumerate(reasons):
        for reason in row:
            value = offline[reason["feature"]].iloc[i]
            assert reason["value"] == (None if pd.isna(value) else value), (i, reason)
    assert any(r["value"] is None for row in reasons for r in row if r["feature"] == "amount")


def test_importing_the_same_version_twice_reuses_the_stored_model(served_settings: Settings) -> None:
    champion = load_champion(served_settings)
    first = save_bento_model(champion, served_settings)
    again = save_bento_model(champion, served_settings)
    assert first.tag == again.tag
    assert first.info.labels == {"registered_model": champion.name, "model_version": champion.version}


def test_missing_model_says_how_to_build_it(settings: Settings) -> None:
    with pytest.raises(ModelNotBuilt, match="build_service"):
        load_serving_model(settings)
