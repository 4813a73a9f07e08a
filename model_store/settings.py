"""Where every store lives: one typed settings object for locations and connections.

Embedded defaults sit under one gitignored folder (``.rtml/``) in the repository; each field is
overridable with an ``RTML_``-prefixed environment variable, and the libraries' own variables
(``MLFLOW_TRACKING_URI``, ``BENTOML_HOME``) win when they are set.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from feast import FeatureStore

REPO_ROOT = Path(__file__).resolve().parent.parent
# What the checkout's local stores and servers reuse whatever home they run in (the demo's, a test's): empty,
# migrated databases to copy. Not a store.
CACHE_DIR = REPO_ROOT / ".rtml" / "cache"
# What stands for a password in every log line and error message (``redacted_url``).
MASK = "***"
# Characters a Redis user name or password may hold: they pass through a URL, Feast's comma-separated
# connection string and the YAML it is substituted into unchanged (``openssl rand -hex 32`` makes one).
REDIS_CREDENTIAL = re.compile(r"[A-Za-z0-9._~-]+")
# Settings that may carry a password inside a URL: masked in the settings' repr.
URL_FIELDS = ("redis_url", "feast_registry", "mlflow_tracking_uri")


def redacted_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for log lines and error messages.

    Handles URLs (``redis://user:password@host:6379/0``, ``postgresql+psycopg://u:p@db/feast``, a
    ``password=`` query parameter) and Feast's Redis connection string (``host:6379,db=0,password=...``).
    """
    if "://" not in url:
        return ",".join(
            f"{part.partition('=')[0]}={MASK}" if part.strip().lower().startswith("password=") else part
            for part in url.split(",")
        )
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() == "password" for key, _ in pairs):
            query = urlencode([(k, MASK if k.lower() == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _feast_credential(name: str, value: str, url: str) -> str:
    """A user name or password as a value of Feast's connection string: JSON-quoted, since Feast reads each
    value with ``json.loads`` (a password of digits would otherwise become a number)."""
    if not REDIS_CREDENTIAL.fullmatch(value):
        raise ValueError(
            f"RTML_REDIS_URL ({redacted_url(url)}): the Redis {name} may hold only letters, digits and "
            "'.', '_', '~', '-' (Feast's connection string splits on ',' and is substituted into YAML); "
            "choose another, e.g. `openssl rand -hex 32`"
        )
    return json.dumps(value)


class Settings(BaseSettings):
    """Locations, connections and operating limits of the platform."""

    model_config = SettingsConfigDict(env_prefix="RTML_", extra="ignore")

    home: Path = Field(REPO_ROOT / ".rtml", description="Root of every embedded default store.")
    data_dir: Path | None = Field(None, description="Raw, validated, quarantine and offline data.")
    feast_repo_path: Path = REPO_ROOT / "feature_repo"
    feast_project: str = "fraud_detection"
    feast_registry: str | None = Field(
        None,
        description="A file path, or a SQLAlchemy URL (postgresql+psycopg://...) for Feast's SQL registry.",
    )
    online_store: Literal["redis", "sqlite"] = "redis"
    offline_store: Literal["duckdb", "spark"] = Field(
        "duckdb",
        description="What runs historical retrieval over the offline Parquet tables: DuckDB in this process, "
        "or Spark (local mode, or the cluster Spark's own configuration names; docs/spark-offline-store.md).",
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    mlflow_tracking_uri: str | None = None
    bentoml_home: Path | None = None
    profile_store: Path | None = Field(None, description="whylogs profiles of training data and traffic.")
    report_store: Path | None = Field(None, description="Drift reports (HTML and JSON).")
    model_name: str = "fraud_scorer"
    feature_service: str = "fraud_scorer_v1"
    stream_max_length: int = Field(
        2_000_000,
        ge=1_000,
        description="Entries the transactions stream keeps (approximately); a consumer further behind than "
        "this loses entries, which reach its dead-letter stream as trimmed.",
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The repr masks passwords in connection URLs: settings end up in tracebacks and debug logs."""
        for name, value in super().__repr_args__():
            yield name, redacted_url(value) if name in URL_FIELDS and isinstance(value, str) else value

    def model_post_init(self, __context: object) -> None:
        self.home = self.home.resolve()
        self.data_dir = (self.data_dir or self.home / "data").resolve()
        self.profile_store = (self.profile_store or self.home / "profiles").resolve()
        self.report_store = (self.report_store or self.home / "reports").resolve()
        self.feast_repo_path = self.feast_repo_path.resolve()
        if self.feast_registry is None:
            self.feast_registry = str(self.home / "feast" / f"{self.feast_project}_registry.db")
        if env_uri := os.environ.get("MLFLOW_TRACKING_URI"):
            self.mlflow_tracking_uri = env_uri
        elif self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"
        if env_home := os.environ.get("BENTOML_HOME"):
            self.bentoml_home = Path(env_home)
        self.bentoml_home = (self.bentoml_home or self.home / "bentoml").resolve()

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def validated_dir(self) -> Path:
        return self.data_dir / "validated"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def offline_dir(self) -> Path:
        return self.data_dir / "offline"

    def stream(self, name: str) -> str:
        """The Redis key of one of the platform's streams (``transactions``, ``decisions``, ``score-requests``,
        ``dead-letter``), on the online store's Redis; like Feast's keys it ends with the project name."""
        return f"rtml:{name}:{self.feast_project}"

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def feast_yaml(self) -> Path:
        if self.offline_store == "spark":
            if self.online_store != "redis":
                raise ValueError(
                    "RTML_OFFLINE_STORE=spark comes with the Redis online store (feature_store_spark.yaml): "
                    "unset RTML_ONLINE_STORE or set it to redis"
                )
            return self.feast_repo_path / "feature_store_spark.yaml"
        name = "feature_store.yaml" if self.online_store == "redis" else "feature_store_sqlite.yaml"
        return self.feast_repo_path / name

    @property
    def redis_connection_string(self) -> str:
        """Feast's Redis format (``host:port,db=N[,username=...][,password=...]``): Feast rejects ``redis://``
        URLs at materialize time. The URL's user and password (percent-decoded) become Feast's, so Feast's
        clients and ours authenticate alike."""
        url = urlsplit(self.redis_url)
        db = (url.path or "/0").lstrip("/") or "0"
        parts = [f"{url.hostname or '127.0.0.1'}:{url.port or 6379}", f"db={db}"]
        if url.username:
            parts.append(f"username={_feast_credential('user name', unquote(url.username), self.redis_url)}")
        if url.password:
            parts.append(f"password={_feast_credential('password', unquote(url.password), self.redis_url)}")
        if url.scheme == "rediss":
            parts.append("ssl=true")
        return ",".join(parts)

    def feast_env(self) -> dict[str, str]:
        """The variables ``feature_store.yaml`` and the feature definitions read."""
        registry = str(self.feast_registry)
        is_sql = "://" in registry
        return {
            "FEAST_PROJECT": self.feast_project,
            "FEAST_REGISTRY_TYPE": "sql" if is_sql else "file",
            "FEAST_REGISTRY_PATH": registry,
            "REDIS_CONNECTION_STRING": self.redis_connection_string,
            "FEAST_SQLITE_PATH": str(self.home / "feast" / f"{self.feast_project}_online.db"),
            "FEAST_OFFLINE_DIR": str(self.offline_dir),
            "FEAST_OFFLINE_STORE": self.offline_store,
        }

    def export_feast_env(self) -> None:
        """Put ``feast_env()`` into this process's environment so Feast's ``${VAR}`` substitution sees it."""
        os.environ.update(self.feast_env())
        if "://" not in str(self.feast_registry):
            Path(str(self.feast_registry)).parent.mkdir(parents=True, exist_ok=True)

    def feature_store(self) -> FeatureStore:
        """The Feast store these settings describe (Feast is imported here, not at module import)."""
        from feast import FeatureStore

        self.export_feast_env()
        return FeatureStore(repo_path=str(self.feast_repo_path), fs_yaml_file=self.feast_yaml)


_CACHED: list = []


S = TypeVar("S", bound="Settings")


def cached_settings(read: Callable[[], S]) -> Callable[[], S]:
    """Decorates a deployable's ``get_*_settings()``: read once per process from the environment (see
    ``clear_settings``). A function of its own name, so Dask and pickle find it by reference."""
    getter = cache(read)
    _CACHED.append(getter)
    return getter


def clear_settings() -> None:
    """Forget every deployable's settings: the next call reads the environment again (tests change it)."""
    for getter in _CACHED:
        getter.cache_clear()


@cached_settings
def get_settings() -> Settings:
    return Settings()


if __name__ == "__main__":
    # `eval "$(python -m model_store.settings)"` gives a shell what `feast` needs to run in feature_repo/.
    s = get_settings()
    for key, value in {**s.feast_env(), "FEAST_FS_YAML_FILE_PATH": str(s.feast_yaml)}.items():
        print(f"export {key}={shlex.quote(value)}")
