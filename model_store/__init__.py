"""Model identity and the platform's settings: shared by flows and services, importing neither.

Importing the package makes Feast's later import skip typeguard's instrumentation (see ``feast_import``):
every flow and service process imports ``model_store`` before it opens a feature store.
"""

from model_store.feast_import import skip_type_instrumentation

skip_type_instrumentation()
