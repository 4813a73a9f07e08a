"""A model's copy for predictions scores exactly as the model does, and the model keeps its parameters."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from catboost import CatBoostClassifier, Pool

from model_store.libraries import catboost, versions


@pytest.fixture(scope="module")
def fitted() -> tuple[CatBoostClassifier, Pool]:
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame({"amount": rng.gamma(2.0, 50.0, n), "count": rng.integers(0, 30, n).astype(float)})
    frame["channel"] = rng.choice(["chip", "online", "contactless"], n)
    frame.loc[::7, "amount"] = np.nan
    labels = ((frame["amount"].fillna(0) > 120) ^ (frame["channel"] == "online")).astype(int)
    model = CatBoostClassifier(
        iterations=40, depth=4, verbose=False, cat_features=["channel"], thread_count=1
    )
    model.fit(frame, labels)
    return model, Pool(frame, cat_features=["channel"])


def test_the_copy_predicts_and_explains_as_the_model_does(fitted: tuple[CatBoostClassifier, Pool]) -> None:
    model, pool = fitted
    light = catboost.for_prediction(model)
    for kind in ("Probability", "RawFormulaVal", "Class"):
        np.testing.assert_array_equal(
            light.predict(pool, prediction_type=kind), model.predict(pool, prediction_type=kind)
        )
    np.testing.assert_array_equal(
        light.get_feature_importance(data=pool, type="ShapValues"),
        model.get_feature_importance(data=pool, type="ShapValues"),
    )
    assert list(light.classes_) == list(model.classes_) and light.feature_names_ == model.feature_names_


def test_only_the_loss_function_stays_and_the_model_keeps_everything(
    fitted: tuple[CatBoostClassifier, Pool],
) -> None:
    model, _ = fitted
    before = model.get_metadata()["params"]
    light = catboost.for_prediction(model)
    assert json.loads(light.get_metadata()["params"]) == {
        "loss_function": json.loads(before)["loss_function"]
    }
    assert model.get_metadata()["params"] == before
    # What the reason codes read from the model is still there.
    assert model.get_all_params()["depth"] == 4


def test_another_catboost_version_fails_loudly(
    fitted: tuple[CatBoostClassifier, Pool], monkeypatch: pytest.MonkeyPatch
) -> None:
    catboost.require_version.cache_clear()
    monkeypatch.setattr(versions, "installed_version", lambda name: "9.9.9")
    try:
        with pytest.raises(versions.LibraryVersionError, match=r"catboost 1\.2\.10, but .* 9\.9\.9"):
            catboost.for_prediction(fitted[0])
    finally:
        catboost.require_version.cache_clear()
