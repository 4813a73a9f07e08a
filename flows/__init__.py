"""Prefect flows of the platform, one per file, named after the flow they define.

The flows' plain functions (and ``model_store``) log through ``logging.getLogger(__name__)``. Prefect sends
the records of the loggers its ``logging.extra_loggers`` setting names (``[tool.prefect.logging]`` in
pyproject.toml) to the logs of the flow or task run they are emitted in, at the logger's own level, which is
the root's WARNING unless set. Here they say INFO, so quarantine counts, trials and promotions reach the
run's logs beside drift alerts.
"""

import logging

for _package in ("flows", "model_store"):
    logging.getLogger(_package).setLevel(logging.INFO)
