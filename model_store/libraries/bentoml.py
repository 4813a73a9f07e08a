"""BentoML: models kept in a model store at a path of our settings, not at the process's ``BENTOML_HOME``.

BentoML 1.4's public model API (``bentoml.models.create``, ``get``, ``list``) works on the store its
dependency container built from ``BENTOML_HOME`` when it was first imported. Our flows and the service keep
models under ``settings.bentoml_home`` (and a bento's own ``models/`` folder), so they need, from
BentoML 1.4.39:

- ``bentoml._internal.models.ModelStore(path)``: a model store at a path;
- the keyword ``_model_store`` of ``bentoml.models.create`` and ``bentoml.models.get``;
- ``bentoml._internal.models.model.copy_model(tag, src_model_store=..., target_model_store=...)``.

Nothing is patched: these are accessors, each checking the version first. Used by ``services/scorer/model.py``
(store, find and load the served model) and ``flows/build_service.py`` (copy it into the bento).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_store.libraries.versions import check_version

if TYPE_CHECKING:
    import bentoml
    from bentoml._internal.models import ModelStore

WRITTEN_FOR = "1.4.39"


@cache
def require_version() -> None:
    """Fail loudly unless BentoML is installed at ``WRITTEN_FOR`` (checked once per process)."""
    check_version("bentoml", WRITTEN_FOR, __name__)


def model_store(path: Path | str) -> ModelStore:
    """BentoML's model store rooted at ``path`` (its ``models`` folder)."""
    require_version()
    from bentoml._internal.models import ModelStore

    return ModelStore(Path(path))


def list_models(path: Path | str, name: str) -> list[bentoml.Model]:
    """The models named ``name`` in the store at ``path``; raises ``bentoml.exceptions.NotFound`` when none."""
    return model_store(path).list(name)


def get_model(path: Path | str, tag: str) -> bentoml.Model:
    """The model ``tag`` (``name:version`` or ``name:latest``) from the store at ``path``."""
    import bentoml

    return bentoml.models.get(tag, _model_store=model_store(path))


@contextmanager
def create_model(path: Path | str, name: str, **options: Any) -> Iterator[bentoml.Model]:
    """``bentoml.models.create(name, **options)`` saving into the store at ``path`` when the block ends."""
    import bentoml

    with bentoml.models.create(name, _model_store=model_store(path), **options) as model:
        yield model


def copy_model(tag: str, source: Path | str, target: Path | str) -> bool:
    """Copy model ``tag`` between stores; ``False`` when ``target`` already holds it."""
    require_version()
    from bentoml._internal.models.model import copy_model as bentoml_copy_model

    return bentoml_copy_model(
        tag, src_model_store=model_store(source), target_model_store=model_store(target)
    )
