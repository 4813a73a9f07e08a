"""Monitoring: drift statistics and verdicts, live performance with delayed labels, reports and triggers.

Plain functions the ``drift_report`` flow wraps. The statistics sit behind ``DriftBackend`` (``drift.py``);
``whylogs_backend.py`` is the one implementation, because whylogs is no longer maintained.
"""
