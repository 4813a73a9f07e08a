"""Batch scoring: score a Parquet file of transactions with a registered model, features as of each transaction.

Features come from Feast's offline store at each transaction's own time (what the online store held when it
happened), through the model's own feature service. Predictions are written with the model version. Run
locally with ``python -m flows.batch_scoring PATH`` or deploy ``batch_scoring/batch-scoring``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from flows.training.dataset import entity_frame, read_feature_spec, retrieve_features
from model_store import libraries
from model_store.atomic_files import write_atomically
from model_store.profiles import PREDICTION_COLUMNS, SCORE_COLUMN
from model_store.registry import CHAMPION, load_scorer
from model_store.scorer import Scorer
from model_store.settings import Settings, get_settings

REQUIRED_COLUMNS = ("transaction_id", "event_timestamp", "customer_id", "merchant_id", "amount", "channel")
IN_MEMORY = {"cache_policy": NO_CACHE, "persist_result": False}


class BatchScoringParams(BaseModel):
    """Which file to score, with which model version, and where the predictions go."""

    input_path: Path = Field(description="Parquet file of transactions (raw transaction columns).")
    output_path: Path | None = Field(
        None, description="Where to write predictions (default: <data_dir>/predictions/<input name>)."
    )
    model: str = Field(CHAMPION, description="Registry alias or version number of the model to score with.")


def read_transactions(path: Path) -> pd.DataFrame:
    """Transactions to score, with the columns scoring needs checked and typed; a clear error otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"no transactions file at {path}")
    try:
        frame = pd.read_parquet(path)
    except Exception as error:
        raise ValueError(f"{path} is not a readable Parquet file: {error}") from error
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; scoring needs {list(REQUIRED_COLUMNS)}")
    if frame["transaction_id"].duplicated().any():
        raise ValueError(f"{path} has duplicate transaction_id values: each transaction is scored once")
    try:
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
        for column in ("customer_id", "merchant_id"):
            frame[column] = frame[column].astype("int64")
        frame["amount"] = frame["amount"].astype("float64")
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error
    return frame


def score_transactions(transactions: pd.DataFrame, scorer: Scorer, store: Any) -> pd.DataFrame:
    """Point-in-time features through the scorer's feature service, then scores and decisions per transaction."""
    spec = read_feature_spec(store, scorer.feature_service)
    features = retrieve_features(store, spec, entity_frame(transactions))
    frame = transactions[["transaction_id"]].merge(features, on="transaction_id", how="left", validate="1:1")
    scores = scorer.score(frame)
    predictions = pd.DataFrame(
        {
            "transaction_id": frame["transaction_id"].to_numpy(),
            "event_timestamp": frame["event_timestamp"].to_numpy(),
            SCORE_COLUMN: scores,
            "decision": scorer.decide(scores),
            "model_version": scorer.version,
        }
    )
    # The serving prediction log's columns, plus which registered model the version belongs to.
    return predictions.loc[:, list(PREDICTION_COLUMNS)].assign(model_name=scorer.name)


def write_predictions(predictions: pd.DataFrame, path: Path) -> Path:
    """Write predictions as Parquet; a reader never sees half of them."""
    return write_atomically(path, lambda partial: predictions.to_parquet(partial, index=False))


@task(retries=2, retry_delay_seconds=10, **IN_MEMORY)
def load_model(model: str, settings: Settings) -> Scorer:
    """The model version to score with, from the registry (retried while MLflow is unreachable)."""
    return load_scorer(model, settings)


@task(**IN_MEMORY)
def score_file(path: Path, scorer: Scorer, settings: Settings) -> pd.DataFrame:
    """Read, fetch point-in-time features, score."""
    return score_transactions(read_transactions(path), scorer, settings.feature_store())


@flow(name="batch_scoring")
def batch_scoring(params: BatchScoringParams) -> dict[str, Any]:
    """Score a file of transactions with a registered model and write the predictions with its version."""
    libraries.typeguard.apply_patches()
    settings = get_settings()
    scorer = load_model(params.model, settings)
    predictions = score_file(params.input_path, scorer, settings)
    output = params.output_path or settings.data_dir / "predictions" / params.input_path.name
    write_predictions(predictions, output)
    get_run_logger().info(
        "scored %d transactions with %s v%s -> %s", len(predictions), scorer.name, scorer.version, output
    )
    return {
        "output": str(output),
        "rows": len(predictions),
        "model_version": scorer.version,
        "flagged": int(predictions["decision"].sum()),
    }


if __name__ == "__main__":
    print(batch_scoring(BatchScoringParams(input_path=Path(sys.argv[1]))))
