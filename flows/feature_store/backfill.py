"""Transactions the batch pipeline ingested from files, published to the stream for the window processor.

The window processor keeps each entity's recent events as its state. Transactions that never went through the
stream (the history a user loads, an upstream system's nightly export) would be missing from that state, so
the pipeline publishes the ones within the windows' horizon of its newest transaction, marked ``backfill``:
the processor counts each transaction id once, whatever it already saw, and the landing writer does not land
them again. Files the landing writer made from the stream are not published back.
"""

from __future__ import annotations

import pandas as pd

from model_store.settings import Settings
from services.stream.events import transactions_of
from services.stream.landing import PREFIX as STREAM_BATCH_PREFIX
from services.stream.publish import publish

SOURCE = "backfill"


def is_from_stream(batch_name: str) -> bool:
    """Whether a raw batch is one the landing writer made from the stream."""
    return batch_name.startswith(STREAM_BATCH_PREFIX)


def recent(transactions: pd.DataFrame, horizon: pd.Timedelta) -> pd.DataFrame:
    """Transactions within ``horizon`` of the newest one: all any window of an entity's newest event needs."""
    if transactions.empty:
        return transactions
    newest = transactions["event_timestamp"].max()
    return transactions[transactions["event_timestamp"] > newest - horizon]


def publish_backfill(settings: Settings, transactions: pd.DataFrame) -> int:
    """Publish validated transactions to the transactions stream as ``backfill``; returns how many."""
    import redis

    events = transactions_of(transactions.sort_values("event_timestamp", kind="stable"))
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    try:
        return publish(client, settings.stream("transactions"), events, SOURCE, settings.stream_max_length)
    finally:
        client.close()
