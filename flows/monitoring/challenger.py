"""Champion against challenger on live traffic: the decision log and the shadow log, transaction by transaction.

Every decided transaction is in the prediction log under the version that decided it; when a challenger is set,
the model that did not decide scored it in the shadow (``services/scorer/shadow.py``), and the traffic log wrote
that score to the shadow log. Pairing the two by transaction id gives both models' scores for the same traffic,
whichever of them decided (the canary reverses the roles for its share of customers). Labels that have arrived
by the report's time turn the pairs into live PR-AUC and recall for each model, on exactly the same rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from model_store.profiles import SCORE_COLUMN

HISTOGRAM_BINS = 20
PAIR_COLUMNS = [
    "transaction_id",
    "event_timestamp",
    "champion_score",
    "challenger_score",
    "champion_decision",
    "challenger_decision",
]


@dataclass(frozen=True)
class LiveFigures:
    """One model's figures on the paired transactions."""

    version: str
    threshold: float | None
    mean_score: float | None
    decline_rate: float | None
    # On the labelled pairs only; None until a label of each class has arrived.
    pr_auc: float | None = None
    recall: float | None = None
    precision: float | None = None


@dataclass(frozen=True)
class ChallengerComparison:
    """Both models on the same transactions: how their scores and decisions differ, and how each did."""

    champion: LiveFigures
    challenger: LiveFigures
    window_start: datetime
    window_end: datetime
    as_of: datetime
    pairs: int
    # Event-time span of the paired traffic: how long the challenger has been seen on live traffic.
    shadow_hours: float
    labelled: int
    positives: int
    # Share of the pairs where both made the same decision, and the two kinds of disagreement.
    agreement: float | None
    champion_only_declines: int
    challenger_only_declines: int
    # Score histograms on shared bin edges (scores are probabilities): for the report's plot.
    bin_edges: list[float] = field(default_factory=list)
    champion_histogram: list[int] = field(default_factory=list)
    challenger_histogram: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("window_start", "window_end", "as_of"):
            out[key] = out[key].isoformat()
        return out


def pair_scores(
    decisions: pd.DataFrame, shadow: pd.DataFrame, champion: str, challenger: str
) -> pd.DataFrame:
    """One row per transaction both versions scored: ``champion_score``, ``challenger_score`` and decisions.

    Rows of other versions (an earlier challenger's shadow, say) are left out; a transaction logged twice (a
    redelivered decision) counts once, by its first record.
    """
    versions = {champion: "champion", challenger: "challenger"}
    logged = pd.concat([decisions, shadow], ignore_index=True)
    logged = logged[logged["model_version"].astype(str).isin(versions)]
    logged = logged.assign(role=logged["model_version"].astype(str).map(versions))
    logged = logged.sort_values("event_timestamp", kind="mergesort").drop_duplicates(
        ["transaction_id", "role"], keep="first"
    )
    wide = logged.pivot(
        index="transaction_id", columns="role", values=["event_timestamp", SCORE_COLUMN, "decision"]
    )
    if not {"champion", "challenger"} <= set(wide.columns.get_level_values("role")):
        return pd.DataFrame(columns=PAIR_COLUMNS)
    paired = pd.DataFrame(
        {
            "event_timestamp": wide[("event_timestamp", "champion")],
            "champion_score": wide[(SCORE_COLUMN, "champion")],
            "challenger_score": wide[(SCORE_COLUMN, "challenger")],
            "champion_decision": wide[("decision", "champion")],
            "challenger_decision": wide[("decision", "challenger")],
        }
    ).dropna()
    return paired.astype({"champion_score": "float64", "challenger_score": "float64"}).reset_index()


def compare_models(
    paired: pd.DataFrame,
    labels: pd.DataFrame,
    champion: tuple[str, float | None],
    challenger: tuple[str, float | None],
    window: tuple[datetime, datetime],
    as_of: datetime,
) -> ChallengerComparison:
    """Figures of both models on the pairs; ``labels`` (``transaction_id``, ``is_fraud``) known at ``as_of``.

    ``champion`` and ``challenger`` are (version, decision threshold).
    """
    labelled = paired.merge(labels, on="transaction_id", how="inner")
    labelled = labelled[labelled["is_fraud"].notna()]
    y = labelled["is_fraud"].to_numpy(dtype=np.int64)
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    figures = {}
    for role, (version, threshold) in (("champion", champion), ("challenger", challenger)):
        scores = paired[f"{role}_score"].to_numpy(dtype=np.float64)
        figures[role] = _figures(
            version,
            threshold,
            scores,
            paired[f"{role}_decision"],
            y,
            labelled[f"{role}_score"].to_numpy(dtype=np.float64),
        )
    agree = paired["champion_decision"] == paired["challenger_decision"]
    return ChallengerComparison(
        champion=figures["champion"],
        challenger=figures["challenger"],
        window_start=window[0],
        window_end=window[1],
        as_of=as_of,
        pairs=len(paired),
        shadow_hours=_span_hours(paired["event_timestamp"]),
        labelled=len(y),
        positives=int(y.sum()),
        agreement=float(agree.mean()) if len(paired) else None,
        champion_only_declines=int(((paired["champion_decision"] == "decline") & ~agree).sum()),
        challenger_only_declines=int(((paired["challenger_decision"] == "decline") & ~agree).sum()),
        bin_edges=edges.tolist(),
        champion_histogram=np.histogram(paired["champion_score"], edges)[0].tolist(),
        challenger_histogram=np.histogram(paired["challenger_score"], edges)[0].tolist(),
    )


def _figures(
    version: str,
    threshold: float | None,
    scores: np.ndarray,
    decisions: pd.Series,
    y: np.ndarray,
    labelled_scores: np.ndarray,
) -> LiveFigures:
    from sklearn.metrics import average_precision_score

    ranked: dict[str, float | None] = {}
    if 0 < y.sum() < len(y):
        ranked["pr_auc"] = float(average_precision_score(y, labelled_scores))
        if threshold is not None:
            flagged = labelled_scores >= threshold
            ranked["recall"] = float(flagged[y == 1].mean())
            ranked["precision"] = float(y[flagged].mean()) if flagged.any() else None
    return LiveFigures(
        version=version,
        threshold=threshold,
        mean_score=float(scores.mean()) if len(scores) else None,
        decline_rate=float((decisions == "decline").mean()) if len(decisions) else None,
        **ranked,
    )


def _span_hours(timestamps: pd.Series) -> float:
    if timestamps.empty:
        return 0.0
    moments = pd.to_datetime(timestamps, utc=True)
    return float((moments.max() - moments.min()).total_seconds() / 3600)
