"""Connection settings: Redis credentials reach Feast's connection string intact and never a log line."""

from __future__ import annotations

import pytest

from model_store import libraries
from model_store.settings import Settings, redacted_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://rtml:s3cret@redis:6379/0", "redis://rtml:***@redis:6379/0"),
        ("rediss://rtml:p@ss@redis:6380/1", "rediss://rtml:***@redis:6380/1"),
        ("redis://redis:6379/0?password=s3cret&health_check_interval=5", None),
        ("postgresql+psycopg://rtml:s3cret@db:5432/feast", "postgresql+psycopg://rtml:***@db:5432/feast"),
        ('redis:6379,db=0,username="rtml",password="s3cret"', 'redis:6379,db=0,username="rtml",password=***'),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("redis://rtml@redis:6379/0", "redis://rtml@redis:6379/0"),
        ("/var/lib/rtml/feast/registry.db", "/var/lib/rtml/feast/registry.db"),
    ],
)
def test_redacted_url_masks_the_password_and_keeps_the_rest(url: str, shown: str | None) -> None:
    masked = redacted_url(url)
    assert "s3cret" not in masked and "p@ss" not in masked
    if shown is not None:
        assert masked == shown
    else:
        assert masked.startswith("redis://redis:6379/0?") and "health_check_interval=5" in masked


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://redis:6379/0", {"db": 0}),
        ("redis://:s3cret@redis:6379/2", {"db": 2, "password": "s3cret"}),
        ("redis://rtml:s3cret@redis:6379/0", {"db": 0, "username": "rtml", "password": "s3cret"}),
        # Feast reads each value with json.loads: digits stay a string, a percent-encoded '~' is decoded.
        ("redis://:0123456789@redis:6379/0", {"db": 0, "password": "0123456789"}),
        ("redis://:1e5@redis:6379/0", {"db": 0, "password": "1e5"}),
        ("rediss://:a%7Eb@redis:6380/0", {"db": 0, "password": "a~b", "ssl": True}),
    ],
)
def test_feasts_connection_string_carries_the_urls_credentials(url: str, options: dict) -> None:
    nodes, parsed = libraries.feast.parse_redis_connection_string(
        Settings(redis_url=url).redis_connection_string
    )
    assert nodes == [{"host": "redis", "port": "6380" if url.startswith("rediss") else "6379"}]
    assert parsed == options


def test_settings_repr_masks_passwords_in_urls() -> None:
    settings = Settings(
        redis_url="redis://:s3cret@redis:6379/0",
        feast_registry="postgresql+psycopg://rtml:s3cret@db:5432/feast",
    )
    assert "s3cret" not in repr(settings) and "redis://:***@redis:6379/0" in repr(settings)
    assert settings.redis_url == "redis://:s3cret@redis:6379/0"  # the value itself is untouched


def test_the_spark_offline_store_picks_its_feast_configuration_and_tells_the_definitions() -> None:
    spark = Settings(offline_store="spark")
    assert spark.feast_yaml.name == "feature_store_spark.yaml"
    assert spark.feast_env()["FEAST_OFFLINE_STORE"] == "spark"
    assert Settings().feast_env()["FEAST_OFFLINE_STORE"] == "duckdb"
    with pytest.raises(ValueError, match="RTML_ONLINE_STORE"):
        _ = Settings(offline_store="spark", online_store="sqlite").feast_yaml
