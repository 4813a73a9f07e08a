"""Reason codes: CatBoost's SHAP values of a request's rows, at the cost of a table lookup per tree.

CatBoost computes a row's SHAP values (``get_feature_importance(type="ShapValues")``) tree by tree, visiting
every leaf of every tree: 7 ms per row for 300 trees of depth 6 on the development machine, 50 ms for 1,000
trees, too slow to answer ``?explain=`` in milliseconds. Its trees are symmetric by default (every node of a
level splits on the same condition), so a row's path through a tree, and with it the tree's SHAP values for the
row, depend only on the leaf the row reaches. ``LeafShap`` therefore asks CatBoost for a tree's SHAP values
once per leaf, on a copy of the model cut down to that tree (``shrink``), and keeps them; a row's SHAP values are
the sum over trees of its leaves' values (``calc_leaf_indexes``): CatBoost's own numbers. A leaf no row has
reached yet is computed when one first does (a fraction of a millisecond per tree), so the table is filled
beforehand from realistic rows: the model inputs of the latest decisions in the decision record
(``recent_inputs``) and the version's input example. The table holds trees x leaves x features floats (4 MB for 300
trees of depth 6 and 28 features). When it is built, it is checked against CatBoost on the first rows it is filled
from (the model's input example first); a model with other trees, or one that fails the check, is explained by
CatBoost row by row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from services.scorer.model import ServingModel
    from services.scorer.settings import ServiceSettings

logger = logging.getLogger(__name__)

SYMMETRIC = "SymmetricTree"
# Largest difference to CatBoost's own SHAP values the table may show (sums in another order differ by ~1e-15).
TOLERANCE = 1e-9
# Rows the table is checked on against CatBoost's own SHAP values (CatBoost takes ~0.1 ms a row for 300 trees;
# a service filling its table from 5,000 decisions would spend half a second of a core on the check alone).
CHECKED_ROWS = 256
SUMMED_ROWS = 64


class LeafShap:
    """SHAP values per (tree, leaf), filled as rows reach the leaves (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.trees = int(model.tree_count_)
        depth = int(model.get_all_params().get("depth", 6))
        self.features = len(model.feature_names_)
        self._one_tree: list[Any | None] = [None] * self.trees
        self._values = np.zeros((self.trees, 2**depth, self.features))
        self._known = np.zeros((self.trees, 2**depth), dtype=bool)
        self._tree_index = np.arange(self.trees)
        self.expected_value = 0.0

    @classmethod
    def build(cls, model: Any, example: Any) -> LeafShap | None:
        """A table for ``model`` filled from ``example`` (a ``Pool``) and checked on its first rows; None when the
        model's trees are not symmetric or the table does not reproduce CatBoost's values (then CatBoost
        explains)."""
        if model.get_all_params().get("grow_policy", SYMMETRIC) != SYMMETRIC:
            return None
        table = cls(model)
        values = table.shap_values(example)  # fills the table from every row
        checked = min(example.num_row(), CHECKED_ROWS)
        reference = model.get_feature_importance(
            data=example.slice(list(range(checked))), type="ShapValues", thread_count=1
        )
        table.expected_value = float(reference[0, -1])
        difference = float(np.abs(values[:checked] - reference[:, :-1]).max())
        if difference > TOLERANCE:
            logger.warning(
                "reason codes: per-leaf SHAP values differ from CatBoost's by %.3g on the input example; "
                "explaining with CatBoost row by row (slower)",
                difference,
            )
            return None
        return table

    def shap_values(self, pool: Any) -> np.ndarray:
        """SHAP values of the pool's rows (rows x features, without CatBoost's expected-value column)."""
        leaves = self.model.calc_leaf_indexes(pool, thread_count=1)
        unknown = ~self._known[self._tree_index, leaves]
        if unknown.any():
            self._learn(pool, leaves, unknown)
        # Summed a chunk of rows at a time: the gathered values are rows x trees x features floats (336 MB for
        # 5,000 rows of 300 trees and 28 features at once).
        out = np.empty((len(leaves), self.features))
        for start in range(0, len(leaves), SUMMED_ROWS):
            chunk = leaves[start : start + SUMMED_ROWS]
            out[start : start + SUMMED_ROWS] = self._values[self._tree_index, chunk].sum(axis=1)
        return out

    def _learn(self, pool: Any, leaves: np.ndarray, unknown: np.ndarray) -> None:
        for tree in np.flatnonzero(unknown.any(axis=0)):
            rows = np.flatnonzero(unknown[:, tree])
            # One row per leaf is enough: every row reaching it gets the same values.
            _, first = np.unique(leaves[rows, tree], return_index=True)
            rows = rows[first]
            values = self._tree(tree).get_feature_importance(
                data=pool.slice(rows.tolist()), type="ShapValues", thread_count=1
            )
            self._values[tree, leaves[rows, tree]] = values[:, :-1]
            self._known[tree, leaves[rows, tree]] = True

    def _tree(self, tree: int) -> Any:
        one = self._one_tree[tree]
        if one is None:
            one = self.model.copy()
            one.shrink(ntree_start=int(tree), ntree_end=int(tree) + 1)
            self._one_tree[tree] = one
        return one


def recent_inputs(
    redis_url: str, stream: str, features: Sequence[str], count: int = 5_000
) -> dict[str, list[Any]]:
    """The model inputs of the latest ``count`` decisions in ``stream``, as feature columns (empty when Redis does
    not answer: the table then fills as requests come)."""
    import redis

    from services.stream.events import MalformedEvent, decode

    columns: dict[str, list[Any]] = {name: [] for name in features}
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        entries = client.xrevrange(stream, count=count)
    except redis.RedisError as error:
        logger.warning("reason codes: no recent decisions to prepare with (%s)", error)
        return columns
    finally:
        client.close()
    for entry_id, fields in entries:
        try:
            decision = decode(entry_id, fields).decision
        except MalformedEvent:
            continue
        if decision is None or not all(name in decision.features for name in features):
            continue  # not decided, or by a model with other features
        for name in features:
            columns[name].append(decision.features[name])
    return columns


def prepare_explanations(model: ServingModel, settings: ServiceSettings) -> None:
    """Fill and check ``model``'s per-leaf table from its input example (an all-missing row when it has none)
    and the latest decisions; any failure leaves CatBoost explaining row by row."""
    import time

    started = time.perf_counter()
    try:
        example = model.input_example or {name: [None] for name in model.features}
        recent = recent_inputs(settings.redis_url, settings.stream("transactions"), model.features)
        model.prepare_explanations(example, recent)
    except Exception:  # reason codes stay correct without the table, only slower
        logger.exception("reason codes for %s v%s: no per-leaf table", model.name, model.version)
        return
    logger.info(
        "reason codes for %s v%s prepared from %d recent decisions in %.1f s",
        model.name,
        model.version,
        len(recent[model.features[0]]),
        time.perf_counter() - started,
    )
