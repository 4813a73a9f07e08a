"""Each library module is written for the version uv.lock installs, and says what to do on another one."""

from __future__ import annotations

import pytest

from model_store import libraries
from model_store.libraries import versions

MODULES = {
    "typeguard": libraries.typeguard,
    "whylogs": libraries.whylogs,
    "feast": libraries.feast,
    "bentoml": libraries.bentoml,
    "prometheus_client": libraries.prometheus_client,
    "catboost": libraries.catboost,
}


@pytest.mark.parametrize("distribution", MODULES)
def test_each_module_is_written_for_the_installed_version(distribution: str) -> None:
    module = MODULES[distribution]
    assert versions.installed_version(distribution) == module.WRITTEN_FOR
    module.require_version()  # no error


def test_the_error_names_the_module_both_versions_and_what_to_do() -> None:
    with pytest.raises(versions.LibraryVersionError) as error:
        versions.check_version("feast", "0.1.0", "model_store.libraries.feast")
    message = str(error.value)
    assert message.startswith("model_store/libraries/feast.py was written for feast 0.1.0, but feast ")
    assert "feast==0.1.0" in message and "uv sync --frozen" in message and "WRITTEN_FOR" in message


def test_a_library_that_is_not_installed_is_named() -> None:
    assert versions.installed_version("no-such-distribution-here") is None
    with pytest.raises(versions.LibraryVersionError, match=r"no-such-distribution-here \(not installed\)"):
        versions.check_version("no-such-distribution-here", "1.0", "model_store.libraries.x")
