"""The windowed views as the repository declares them."""

from __future__ import annotations

import pytest

from services.stream.windows import WindowedView
from tests.fixtures.feature_repo import declared_windowed_views


@pytest.fixture(scope="session")
def declared_views() -> dict[str, WindowedView]:
    return declared_windowed_views()
