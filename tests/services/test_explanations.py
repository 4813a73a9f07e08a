"""Per-leaf SHAP values give CatBoost's own SHAP values, for rows the table has never seen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from catboost import CatBoostClassifier, Pool

from services.scorer.explanations import LeafShap

CATEGORICAL = ["channel", "region"]


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(rng.normal(size=(n, 5)), columns=[f"x{i}" for i in range(5)])
    data.loc[rng.random(n) < 0.1, "x1"] = np.nan  # missing values take their own branch
    data["channel"] = rng.choice(["chip", "online", "contactless"], n)
    data["region"] = rng.choice(list("abcdefgh"), n)
    return data


def fitted(**params: object) -> tuple[CatBoostClassifier, pd.DataFrame]:
    train = frame(2000, 0)
    labels = (train["x0"] + (train["channel"] == "online") + np.random.default_rng(1).normal(size=2000)) > 1
    model = CatBoostClassifier(
        iterations=60,
        depth=5,
        verbose=False,
        thread_count=1,
        cat_features=CATEGORICAL,
        random_seed=0,
        **params,
    )
    return model.fit(train, labels.astype(int)), train


def test_the_table_reproduces_catboosts_shap_values_on_rows_it_never_saw() -> None:
    model, _ = fitted()
    table = LeafShap.build(model, Pool(frame(3, 2), cat_features=CATEGORICAL))
    assert table is not None
    rows = Pool(frame(400, 3), cat_features=CATEGORICAL)
    expected = model.get_feature_importance(data=rows, type="ShapValues")
    np.testing.assert_allclose(table.shap_values(rows), expected[:, :-1], rtol=0, atol=1e-9)
    assert table.expected_value == pytest.approx(expected[0, -1])
    # Asked again, every leaf is known: nothing more is computed.
    one_tree_copies = sum(t is not None for t in table._one_tree)
    np.testing.assert_allclose(table.shap_values(rows), expected[:, :-1], rtol=0, atol=1e-9)
    assert sum(t is not None for t in table._one_tree) == one_tree_copies


def test_trees_that_are_not_symmetric_are_left_to_catboost() -> None:
    model, _ = fitted(grow_policy="Depthwise")
    assert LeafShap.build(model, Pool(frame(3, 2), cat_features=CATEGORICAL)) is None
