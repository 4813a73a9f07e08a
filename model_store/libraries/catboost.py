"""catboost: a copy of a model for predictions, without the training parameters each prediction re-reads.

CatBoost 1.2.10 parses the model's ``params`` metadata (every training parameter as JSON, 4 KB and more) on
each ``predict`` call, to learn the loss function. For one row that parse is most of the call: 42 µs
per ``predict`` on a 300-tree model, 19 µs with ``params`` holding the loss function alone, of which the trees
take ~1.5 µs (measured 2026-12-05; docs/architecture.md, "Why it is built this way").
``for_prediction`` returns a copy whose ``params`` keep only ``loss_function``; the original keeps
everything, for what reads the other parameters (``get_all_params``: the reason codes' tree depth and
growing policy).

It relies on CatBoost's predictions, raw or probabilities, reading no training parameter but the loss
function (public API otherwise: ``copy``, ``get_metadata``). ``tests/model_store/libraries/test_catboost.py``
holds the copy's predictions and SHAP values to the original's.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from model_store.libraries.versions import check_version

WRITTEN_FOR = "1.2.10"
# The training parameter predictions read (the objective decides how raw scores become probabilities).
KEPT_PARAMS = ("loss_function",)


@cache
def require_version() -> None:
    """Fail loudly unless catboost is installed at ``WRITTEN_FOR`` (checked once per process)."""
    check_version("catboost", WRITTEN_FOR, __name__)


def for_prediction(model: Any) -> Any:
    """A copy of a fitted CatBoost model whose ``params`` metadata holds only what predictions read."""
    require_version()
    copy = model.copy()
    metadata = copy.get_metadata()
    if "params" in metadata:
        params = json.loads(metadata["params"])
        metadata["params"] = json.dumps({k: params[k] for k in KEPT_PARAMS if k in params})
    return copy
