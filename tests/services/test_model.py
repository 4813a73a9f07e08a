"""The served model is the registry's champion: same identity, threshold and scores as offline scoring."""

from __future__ import annotations

import time

import numpy as np
import pytest

from model_store.registry import load_champion
from model_store.settings import Settings
from services.scorer.model import APPROVE, DECLINE, ModelNotBuilt, load_serving_model, save_bento_model
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


def test_importing_the_same_version_twice_reuses_the_stored_model(served_settings: Settings) -> None:
    champion = load_champion(served_settings)
    first = save_bento_model(champion, served_settings)
    again = save_bento_model(champion, served_settings)
    assert first.tag == again.tag
    assert first.info.labels == {"registered_model": champion.name, "model_version": champion.version}


def test_missing_model_says_how_to_build_it(settings: Settings) -> None:
    with pytest.raises(ModelNotBuilt, match="build_service"):
        load_serving_model(settings)
