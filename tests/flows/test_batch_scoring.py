"""Batch scoring: a file of transactions scored by the champion with point-in-time features."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flows.batch_scoring import BatchScoringParams, batch_scoring, read_transactions
from model_store.registry import load_champion
from model_store.settings import Settings


def _recent_transactions(settings: Settings, rows: int) -> pd.DataFrame:
    frame = pd.read_parquet(settings.validated_dir / "transactions").drop(columns="date", errors="ignore")
    frame = frame.sort_values("event_timestamp").tail(rows)
    return frame.drop(columns=["is_fraud", "label_timestamp", "oracle_probability"], errors="ignore")


def test_batch_scoring_writes_scores_decisions_and_the_model_version(
    champion_settings: Settings, tmp_path: Path
) -> None:
    transactions = _recent_transactions(champion_settings, 300)
    source = tmp_path / "to_score.parquet"
    transactions.to_parquet(source, index=False)
    output = tmp_path / "out" / "scored.parquet"

    summary = batch_scoring(BatchScoringParams(input_path=source, output_path=output))

    champion = load_champion(champion_settings)
    predictions = pd.read_parquet(output)
    assert summary["rows"] == len(predictions) == len(transactions)
    assert set(predictions["transaction_id"]) == set(transactions["transaction_id"])
    assert (predictions["model_version"] == champion.version).all()
    assert predictions["score"].between(0, 1).all() and predictions["score"].nunique() > 10
    assert (predictions["decision"] == (predictions["score"] >= champion.threshold)).all()
    assert summary["flagged"] == int(predictions["decision"].sum())


def test_bad_input_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no transactions file"):
        read_transactions(tmp_path / "missing.parquet")
    partial = tmp_path / "partial.parquet"
    pd.DataFrame({"transaction_id": ["a"], "event_timestamp": [pd.Timestamp.now(tz="UTC")]}).to_parquet(
        partial
    )
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['customer_id'"):
        read_transactions(partial)
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        read_transactions(not_parquet)
