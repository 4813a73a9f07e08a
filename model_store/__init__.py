"""Model identity and the platform's settings: shared by flows and services, importing neither.

Importing it has no side effects: library patches are applied by the entry points that need them
(``model_store.libraries``).
"""
