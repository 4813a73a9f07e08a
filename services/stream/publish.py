"""Publishing transactions to the stream, and the entry point for systems that do not call ``POST /score``.

    python -m services.stream.publish transactions.parquet      # decided elsewhere: features only
    python -m services.stream.publish --score transactions.csv  # to stream scoring, decisions on rtml:decisions
    producer | python -m services.stream.publish -              # JSON lines on stdin

The client-side format is ``POST /score``'s body: ``transaction_id``, ``customer_id``, ``merchant_id``,
``amount``, ``timestamp`` (ISO 8601 with a time zone; the raw schema's ``event_timestamp`` is accepted) and
``channel``, as CSV or Parquet columns or JSON keys; other columns are ignored. Each row is validated as the
scoring API validates a request: a bad row is reported with its number, field and reason and is not
published, and the command exits with status 1 when any row was refused (the others are published:
publishing the same file again is harmless, the window processor counts each transaction id once).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from model_store.settings import redacted_url
from services.scorer.transaction import Transaction
from services.stream.events import encode, transaction_json

if TYPE_CHECKING:
    import redis


CHUNK = 1_000
Command = tuple[Any, ...]


def xadd(stream: str, fields: dict[bytes, bytes], max_length: int) -> Command:
    """``XADD`` with approximate trimming (whole macro-nodes: cheap) to about ``max_length`` entries."""
    return (
        "XADD",
        stream,
        "MAXLEN",
        "~",
        max_length,
        "*",
        *(item for pair in fields.items() for item in pair),
    )


def publish(
    client: redis.Redis, stream: str, transactions: Iterable[Transaction], source: str, max_length: int
) -> int:
    """XADD each transaction as an event (pipelined in chunks); returns how many were published."""
    import hiredis

    count = 0
    chunk: list[bytes] = []
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        for transaction in transactions:
            chunk.append(
                hiredis.pack_command(xadd(stream, encode(transaction_json(transaction), source), max_length))
            )
            if len(chunk) == CHUNK:
                count += _send(connection, chunk)
                chunk = []
        if chunk:
            count += _send(connection, chunk)
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
    return count


def _send(connection: Any, packed: list[bytes]) -> int:
    connection.send_packed_command(packed)
    for _ in packed:
        connection.read_response()
    return len(packed)


def read_rows(source: str) -> Iterator[dict[str, Any]]:
    """Rows of a CSV or Parquet file, or of JSON lines on stdin (``-``)."""
    if source == "-":
        for number, line in enumerate(sys.stdin.buffer, start=1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as error:
                    yield {"__error__": f"line {number} is not JSON: {error}"}
        return
    import pandas as pd

    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path, dtype={"transaction_id": str, "channel": str}, keep_default_na=False)
    else:
        raise ValueError(f"{path}: expected a .csv or .parquet file, or - for JSON lines on stdin")
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].map(lambda t: t.isoformat() if t is not pd.NaT else None)
    yield from frame.to_dict("records")


def validate(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any], Transaction | None, str]]:
    """(row number, row, transaction or None, reason) for each row, validated as ``POST /score`` validates."""
    for number, row in enumerate(rows, start=1):
        if "__error__" in row:
            yield number, row, None, row["__error__"]
            continue
        try:
            yield number, row, Transaction.model_validate(_plain(row)), ""
        except ValidationError as error:
            problems = error.errors(include_url=False, include_input=False)
            yield (
                number,
                row,
                None,
                "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in problems),
            )


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars (from pandas) as Python values: the model's strict fields take ints and floats, not numpy."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in row.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.stream.publish", description=__doc__.splitlines()[0]
    )
    parser.add_argument("source", help="a .csv or .parquet file, or - for JSON lines on stdin")
    parser.add_argument(
        "--score", action="store_true", help="ask for decisions: publish to the score-requests stream"
    )
    parser.add_argument(
        "--refused",
        type=Path,
        help="where refused rows go, with their reasons, as JSON lines (default: <source>.refused.jsonl, "
        "or refused.jsonl for stdin)",
    )
    args = parser.parse_args(argv)
    refused_path = args.refused or Path(
        "refused.jsonl" if args.source == "-" else f"{args.source}.refused.jsonl"
    )
    import redis

    from model_store.settings import get_settings

    settings = get_settings()
    stream = settings.stream("score-requests" if args.score else "transactions")
    refused: list[bytes] = []
    good: list[Transaction] = []
    try:
        for number, row, transaction, reason in validate(read_rows(args.source)):
            if transaction is None:
                if len(refused) < 20:
                    print(f"row {number}: {reason}", file=sys.stderr)
                refused.append(
                    orjson.dumps({"row": number, "reason": reason, "values": row}, default=str) + b"\n"
                )
            else:
                good.append(transaction)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if refused:
        refused_path.write_bytes(b"".join(refused))
        print(f"{len(refused)} rows refused, each with its reason, in {refused_path}", file=sys.stderr)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    try:
        published = publish(client, stream, good, "upstream", settings.stream_max_length)
    except redis.ConnectionError as error:
        print(
            f"error: Redis at {redacted_url(settings.redis_url)} is unreachable ({error}); nothing was published",
            file=sys.stderr,
        )
        return 2
    print(f"published {published} transactions to {stream}; refused {len(refused)}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
