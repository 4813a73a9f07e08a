"""Model identity: the registered name, the champion and challenger aliases, the promotion gate and rollback.

A new version is registered as ``challenger``. It becomes ``champion`` only when ``decide_promotion`` passes it:
absolute floors on its holdout metrics, and (when a champion exists) a PR-AUC gain over the champion scored on
the same holdout larger than the configured margin. A policy can ask for live evidence as well: the version
that passed the holdout then stays challenger, scored in the shadow, until the drift report finds it has seen
enough live traffic and labels and does not trail the champion there (``decide_after_shadow``). Every decision is written on the version (tags
``promotion.*`` and its description), and each promoted version remembers the champion it replaced
(``previous_champion``), which is what ``rollback`` returns to.

Operators::

    python -m model_store.registry show
    python -m model_store.registry rollback [--to-version N]
    python -m model_store.registry promote N [--reason TEXT]

Callers that score (the service, batch scoring) use ``load_champion()``: see ``Scorer`` in
``model_store/scorer.py`` for what it returns.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from model_store.scorer import ModelContract, Scorer
from model_store.settings import Settings, get_settings, redacted_url
from model_store.tracking import mlflow_client

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION_TAG = "previous_champion"
DECISION_TAG = "promotion.decision"
# The promotion policy a shadowing version is judged by, as JSON.
POLICY_TAG = "promotion.policy"
# Feast's MLflow integration resolves a model URI to its feature service through this version tag.
FEAST_FEATURE_SERVICE_TAG = "feast.feature_service"


class NoChampionError(LookupError):
    """The registered model has no version under the requested alias."""


class PromotionPolicy(BaseModel):
    """When a challenger may replace the champion: floors it must pass and the PR-AUC gain it must show."""

    pr_auc_margin: float = Field(
        0.005,
        ge=0,
        description="Holdout PR-AUC gain over the champion (scored on the same holdout) needed to promote.",
    )
    # Floors catch a broken model, not a mediocre one: with ~1 % fraud a random scorer has PR-AUC ~0.01.
    min_pr_auc: float = Field(0.1, ge=0, le=1, description="Floor on holdout PR-AUC, champion or not.")
    min_roc_auc: float = Field(0.75, ge=0, le=1, description="Floor on holdout ROC-AUC, champion or not.")
    # Live evidence: the shadow's paired traffic (flows/monitoring/challenger.py), judged by the drift report.
    min_shadow_hours: float = Field(
        0,
        ge=0,
        description="Hours of live traffic (event time) the challenger must have scored in the shadow beside the "
        "champion before it may replace it; 0 with min_live_labels 0 promotes on the holdout alone.",
    )
    min_live_labels: int = Field(
        0, ge=0, description="Labelled transactions both models scored live needed before promotion."
    )
    min_live_positives: int = Field(
        0, ge=0, description="Labelled frauds among them needed before promotion (live PR-AUC needs some)."
    )
    max_live_pr_auc_drop: float = Field(
        0.0,
        ge=0,
        le=1,
        description="How far the challenger's live PR-AUC may trail the champion's on the same labelled "
        "transactions and still be promoted.",
    )

    @property
    def needs_shadow(self) -> bool:
        return self.min_shadow_hours > 0 or self.min_live_labels > 0 or self.min_live_positives > 0


@dataclass(frozen=True)
class PromotionDecision:
    """The gate's verdict on one candidate, with the reasons written on its model version."""

    promote: bool
    reasons: tuple[str, ...]
    champion_version: str | None = None
    # Passed the holdout, waits for live evidence in the shadow (the policy's min_shadow_hours and labels).
    shadowing: bool = False

    @property
    def verdict(self) -> str:
        return "promoted" if self.promote else "shadowing" if self.shadowing else "rejected"


def decide_promotion(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    policy: PromotionPolicy,
    champion_version: str | None = None,
) -> PromotionDecision:
    """Apply the promotion rule to holdout metrics (``pr_auc``, ``roc_auc``) of the candidate and the champion.

    Both sets of metrics must come from the same holdout; ``champion`` is None when there is none yet. A NaN
    metric fails its floor.
    """
    failures: list[str] = []
    pr_auc, roc_auc = float(candidate["pr_auc"]), float(candidate["roc_auc"])
    if not pr_auc >= policy.min_pr_auc:
        failures.append(f"holdout PR-AUC {pr_auc:.4f} is below the floor min_pr_auc={policy.min_pr_auc}")
    if not roc_auc >= policy.min_roc_auc:
        failures.append(f"holdout ROC-AUC {roc_auc:.4f} is below the floor min_roc_auc={policy.min_roc_auc}")
    if champion is not None:
        champion_pr_auc = float(champion["pr_auc"])
        gain = pr_auc - champion_pr_auc
        if not gain > policy.pr_auc_margin:
            failures.append(
                f"holdout PR-AUC {pr_auc:.4f} does not beat champion v{champion_version}'s {champion_pr_auc:.4f} "
                f"on the same holdout by more than pr_auc_margin={policy.pr_auc_margin} (gain {gain:+.4f})"
            )
    if failures:
        return PromotionDecision(False, tuple(failures), champion_version)
    if champion is None:
        # Nothing to shadow beside: the first champion is promoted on its holdout.
        why = f"first champion: holdout PR-AUC {pr_auc:.4f} and ROC-AUC {roc_auc:.4f} pass the floors"
        return PromotionDecision(True, (why,), champion_version)
    why = (
        f"holdout PR-AUC {pr_auc:.4f} beats champion v{champion_version}'s {float(champion['pr_auc']):.4f} "
        f"by more than pr_auc_margin={policy.pr_auc_margin}; floors pass"
    )
    if policy.needs_shadow:
        wait = (
            f"shadowing beside v{champion_version} until it has scored {policy.min_shadow_hours:g} hours of live "
            f"traffic with {policy.min_live_labels} labels ({policy.min_live_positives} frauds)"
        )
        return PromotionDecision(False, (why, wait), champion_version, shadowing=True)
    return PromotionDecision(True, (why,), champion_version)


def decide_after_shadow(
    shadow_hours: float,
    labelled: int,
    positives: int,
    live_pr_auc: tuple[float | None, float | None],
    policy: PromotionPolicy,
    champion_version: str,
) -> PromotionDecision:
    """The live half of the gate, for a challenger that passed the holdout and has been shadowing.

    ``live_pr_auc`` is (champion's, challenger's) on the same labelled transactions (None when not computable).
    Too little evidence keeps it shadowing; a challenger trailing the champion live by more than
    ``max_live_pr_auc_drop`` is rejected.
    """
    seen = f"{shadow_hours:.1f} hours of live traffic, {labelled} labelled ({positives} frauds)"
    short = (
        shadow_hours < policy.min_shadow_hours
        or labelled < policy.min_live_labels
        or positives < policy.min_live_positives
    )
    champion_pr_auc, challenger_pr_auc = live_pr_auc
    if short or (policy.min_live_labels > 0 and (champion_pr_auc is None or challenger_pr_auc is None)):
        wait = (
            f"shadowing: {seen}; the policy asks for {policy.min_shadow_hours:g} hours, {policy.min_live_labels} "
            f"labels and {policy.min_live_positives} frauds"
        )
        return PromotionDecision(False, (wait,), champion_version, shadowing=True)
    if champion_pr_auc is not None and challenger_pr_auc is not None:
        live = f"live PR-AUC {challenger_pr_auc:.4f} against champion v{champion_version}'s {champion_pr_auc:.4f}"
        if not challenger_pr_auc >= champion_pr_auc - policy.max_live_pr_auc_drop:
            why = (
                f"{live} trails by more than max_live_pr_auc_drop={policy.max_live_pr_auc_drop} after {seen}"
            )
            return PromotionDecision(False, (why,), champion_version)
        return PromotionDecision(True, (f"{live} after {seen}",), champion_version)
    return PromotionDecision(True, (f"shadowed {seen}",), champion_version)


def contract_tags(contract: ModelContract) -> dict[str, str]:
    """The contract as version tags (for people browsing the registry; the MLmodel metadata is the source)."""
    return {
        "decision_threshold": repr(contract.decision_threshold),
        "target_fpr": repr(contract.target_fpr),
        "feature_service": contract.feature_service,
        FEAST_FEATURE_SERVICE_TAG: contract.feature_service,
        "features": json.dumps(contract.features),
        "categorical_features": json.dumps(contract.categorical_features),
    }


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version an alias points to, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def register_challenger(
    model_uri: str, contract: ModelContract, settings: Settings | None = None, run_id: str | None = None
) -> ModelVersion:
    """Register a logged model as a new version of ``settings.model_name`` and point ``challenger`` at it."""
    import mlflow

    settings = settings or get_settings()
    client = mlflow_client(settings)
    tags = contract_tags(contract)
    if run_id:
        tags["training_run_id"] = run_id
    version = mlflow.register_model(model_uri, settings.model_name, tags=tags)
    challenge(str(version.version), settings)
    return client.get_model_version(settings.model_name, str(version.version))


def challenge(version: str, settings: Settings | None = None) -> None:
    """Point ``challenger`` at an existing version: serving services shadow it (and canary it, when configured)."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    client.set_model_version_tag(settings.model_name, version, "challenger_since", _now())
    logger.info("%s v%s is the %s", settings.model_name, version, CHALLENGER)


def record_decision(
    version: str,
    decision: PromotionDecision,
    settings: Settings | None = None,
    policy: PromotionPolicy | None = None,
) -> None:
    """Write the gate's verdict on the version and, when it passed, make the version champion.

    A shadowing verdict also writes the policy on the version: the drift report judges the live evidence by the
    policy the version was gated with.
    """
    settings = settings or get_settings()
    client = mlflow_client(settings)
    name = settings.model_name
    verdict = decision.verdict
    client.set_model_version_tag(name, version, DECISION_TAG, verdict)
    client.set_model_version_tag(name, version, "promotion.reasons", "; ".join(decision.reasons))
    client.set_model_version_tag(
        name, version, "promotion.compared_with", decision.champion_version or "none"
    )
    if decision.shadowing and policy is not None:
        client.set_model_version_tag(name, version, POLICY_TAG, policy.model_dump_json())
    summary = {
        "promoted": "Promoted to champion",
        "shadowing": "Challenger in the shadow",
        "rejected": "Stays challenger",
    }[verdict]
    client.update_model_version(name, version, description=f"{summary}: " + "; ".join(decision.reasons) + ".")
    if decision.promote:
        _move_champion(client, name, version, reason="promotion gate passed")
    logger.info("%s v%s %s: %s", name, version, verdict, "; ".join(decision.reasons))


def promote(version: str, reason: str, settings: Settings | None = None) -> str | None:
    """Make ``version`` champion by hand (bypassing the gate); returns the champion it replaced."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    client.get_model_version(settings.model_name, version)  # fails clearly if it does not exist
    return _move_champion(client, settings.model_name, version, reason=f"manual promotion: {reason}")


def _move_champion(client: MlflowClient, name: str, version: str, reason: str) -> str | None:
    current = version_by_alias(client, name, CHAMPION)
    previous = str(current.version) if current is not None else None
    if previous == str(version):
        return previous
    if previous is not None:
        client.set_model_version_tag(name, version, PREVIOUS_CHAMPION_TAG, previous)
    client.set_registered_model_alias(name, CHAMPION, version)
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is not None and str(challenger.version) == str(version):
        # The challenger is now the champion: one alias per role, so nothing is left challenging.
        client.delete_registered_model_alias(name, CHALLENGER)
    client.set_model_version_tag(name, version, "champion_since", _now())
    client.set_model_version_tag(name, version, "champion_reason", reason)
    logger.info("%s champion: v%s -> v%s (%s)", name, previous, version, reason)
    return previous


def rollback(to_version: str | None = None, settings: Settings | None = None) -> tuple[str, str]:
    """Point ``champion`` back at ``to_version``, or at the champion the current one replaced.

    Returns ``(from_version, to_version)``. The version rolled back from is tagged with when and why.
    """
    settings = settings or get_settings()
    client = mlflow_client(settings)
    name = settings.model_name
    current = version_by_alias(client, name, CHAMPION)
    if current is None:
        raise NoChampionError(f"registered model {name!r} has no {CHAMPION}: nothing to roll back")
    target = to_version or current.tags.get(PREVIOUS_CHAMPION_TAG)
    if not target:
        raise NoChampionError(
            f"{name} v{current.version} replaced no earlier champion; pass --to-version N to choose one"
        )
    target, source = str(target), str(current.version)
    if target == source:
        raise ValueError(f"v{target} is already the {CHAMPION} of {name!r}")
    client.get_model_version(name, target)  # fails clearly if it does not exist
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_model_version_tag(name, source, "rolled_back", f"{_now()} to v{target}")
    client.set_model_version_tag(name, target, "champion_since", _now())
    client.set_model_version_tag(name, target, "champion_reason", f"rollback from v{source}")
    logger.info("%s champion rolled back: v%s -> v%s", name, source, target)
    return source, target


def load_scorer(alias_or_version: str = CHAMPION, settings: Settings | None = None) -> Scorer:
    """Load a version (by alias such as ``champion``, or by number) with its contract, ready to score.

    The alias is resolved once, and the model and its contract are read from that version, so an alias moved
    meanwhile cannot mix two versions.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    settings = settings or get_settings()
    name = settings.model_name
    try:
        client = mlflow_client(settings)
        if alias_or_version.isdigit():
            version = client.get_model_version(name, alias_or_version)
        else:
            version = version_by_alias(client, name, alias_or_version)
            if version is None:
                raise NoChampionError(
                    f"registered model {name!r} has no version with alias {alias_or_version!r} at "
                    f"{redacted_url(str(settings.mlflow_tracking_uri))}: run the training pipeline first"
                )
        uri = f"models:/{name}/{version.version}"
        info = mlflow.models.get_model_info(uri)
        contract = ModelContract.model_validate(info.metadata or {})
        model = mlflow.catboost.load_model(uri)
    except MlflowException as error:
        raise RuntimeError(
            f"could not load {name!r} {alias_or_version!r} from MLflow at {redacted_url(str(settings.mlflow_tracking_uri))}: {error}"
        ) from error
    return Scorer(
        model=model, name=name, version=str(version.version), contract=contract, run_id=version.run_id
    )


def aliases(settings: Settings | None = None) -> dict[str, str]:
    """Every alias of the registered model and the version it points to (one registry call)."""
    from mlflow.exceptions import MlflowException

    settings = settings or get_settings()
    client = mlflow_client(settings)
    try:
        model = client.get_registered_model(settings.model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def load_input_example(version: str, settings: Settings | None = None) -> Any:
    """The input example logged with a version (a frame of model inputs), or None when it has none."""
    import mlflow

    settings = settings or get_settings()
    mlflow_client(settings)
    uri = f"models:/{settings.model_name}/{version}"
    return mlflow.models.Model.load(uri).load_input_example(uri)


def load_champion(settings: Settings | None = None) -> Scorer:
    """The current champion (``models:/<model_name>@champion``) as a ``Scorer``.

    It carries the CatBoost model (``.model``), its version (``.version``), the decision threshold
    (``.threshold``), the Feast feature service (``.feature_service``) and the feature columns in order
    (``.features``); ``.score(frame)`` returns fraud probabilities and ``.decide(scores)`` the decisions.
    """
    return load_scorer(CHAMPION, settings)


def _now() -> str:
    # Milliseconds: the time an alias moved is what a rollout's swap time is measured from.
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def describe(settings: Settings | None = None) -> list[str]:
    """One line per version: number, aliases, decision and reasons, newest first."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    versions = client.search_model_versions(f"name='{settings.model_name}'")
    aliases: dict[str, list[str]] = {}
    if versions:
        # Version search results carry no aliases on every backend; the registered model always does.
        for alias, number in client.get_registered_model(settings.model_name).aliases.items():
            aliases.setdefault(str(number), []).append(alias)
    lines = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        names = ",".join(sorted(aliases.get(str(v.version), []))) or "-"
        decision = v.tags.get(DECISION_TAG, "-")
        lines.append(f"v{v.version}\t{names}\t{decision}\t{v.tags.get('promotion.reasons', '')}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Command line for operators: show versions, roll the champion back, promote by hand."""
    parser = argparse.ArgumentParser(
        prog="python -m model_store.registry", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("show", help="list versions with their aliases and promotion decisions")
    back = commands.add_parser("rollback", help="point champion back at the previous (or a given) version")
    back.add_argument("--to-version", help="version number to make champion (default: the one it replaced)")
    manual = commands.add_parser("promote", help="make a version champion, bypassing the gate")
    manual.add_argument("version")
    manual.add_argument("--reason", default="operator decision")
    args = parser.parse_args(argv)
    from mlflow.exceptions import MlflowException

    settings = get_settings()
    try:
        if args.command == "show":
            print("\n".join(describe(settings)) or f"no versions of {settings.model_name!r}")
        elif args.command == "rollback":
            old, new = rollback(args.to_version, settings)
            print(f"{settings.model_name}: {CHAMPION} moved from v{old} back to v{new}")
        else:
            old = promote(args.version, args.reason, settings)
            print(
                f"{settings.model_name}: {CHAMPION} is now v{args.version} (was {f'v{old}' if old else 'none'})"
            )
    except (LookupError, ValueError, RuntimeError, MlflowException) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
