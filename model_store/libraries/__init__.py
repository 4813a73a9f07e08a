"""Every patch of a third-party library and every use of its private API, in one module named after the library.

- ``typeguard``: ``@typechecked`` made a no-op before Feast's import (``apply_patches``).
- ``whylogs``: a vectorized float split and reused component classes (``apply_patches``); its drift module
  without ``whylogs.viz``'s notebook imports (``drift_algorithms``).
- ``feast``: Feast's Redis keys, fields, values and read plan, through its private functions (accessors).
- ``bentoml``: model stores at a path of ours (accessors).
- ``prometheus_client``: a histogram's bulk observe (accessor).
- ``catboost``: a model's copy for predictions, without the training parameters each prediction parses.

Each module states what it relies on, pins the version it was written for (``WRITTEN_FOR``) and checks it
before touching the library (``require_version``, which raises ``LibraryVersionError``). Importing this
package, or any module in it, imports none of these libraries and patches nothing: patches are applied by
the entry points that need them (docs/architecture.md lists which).
"""

from model_store.libraries import bentoml, catboost, feast, prometheus_client, typeguard, whylogs
from model_store.libraries.versions import LibraryVersionError

__all__ = ["LibraryVersionError", "bentoml", "catboost", "feast", "prometheus_client", "typeguard", "whylogs"]
