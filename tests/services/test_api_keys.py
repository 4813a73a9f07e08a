"""The accepted API keys: any of several, each compared every time, in constant time."""

from __future__ import annotations

import hmac

import pytest
from pydantic import SecretStr

from services.scorer import api_keys
from services.scorer.api_keys import SLOTS, ApiKeys
from services.scorer.settings import ServiceSettings

KEYS = ["key-a-0001", "a-much-longer-key-b-0002", "c3"]


@pytest.fixture
def comparisons(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every ``hmac.compare_digest`` call the check makes, with its arguments."""
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def counted(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(api_keys.hmac, "compare_digest", counted)
    return calls


@pytest.mark.parametrize(
    ("presented", "accepted"),
    [(KEYS[0], True), (KEYS[1], True), (KEYS[2], True), ("key-a-0002", False), ("", False), (None, False)],
)
def test_every_key_is_compared_whichever_matches_and_on_equal_lengths(
    comparisons: list[tuple[bytes, bytes]], presented: str | None, accepted: bool
) -> None:
    keys = ApiKeys(SecretStr(k) for k in KEYS)
    assert keys.accept(presented) is accepted
    # No early exit: as many comparisons for the first key, the last, or none, and as many as with one key; all
    # of 32-byte digests, so neither which key matched, how many there are, nor any key's length shows.
    assert len(comparisons) == SLOTS
    assert {b for _, b in comparisons} >= {api_keys._digest(k) for k in KEYS}
    assert {len(a) for a, _ in comparisons} | {len(b) for _, b in comparisons} == {32}


def test_the_number_of_comparisons_does_not_tell_how_many_keys_there_are(
    comparisons: list[tuple[bytes, bytes]],
) -> None:
    for count in (1, 2, SLOTS):
        comparisons.clear()
        ApiKeys(SecretStr(f"key-{i}") for i in range(count)).accept("key-0")
        assert len(comparisons) == SLOTS, count
    comparisons.clear()
    ApiKeys(SecretStr(f"key-{i}") for i in range(SLOTS + 2)).accept("other")
    assert len(comparisons) == SLOTS + 2  # beyond SLOTS, every key still compared


def test_no_key_configured_means_no_key_required() -> None:
    assert not ApiKeys([]).required
    assert ApiKeys([SecretStr("k")]).required and len(ApiKeys([SecretStr("k"), SecretStr("k")])) == 1
    with pytest.raises(ValueError, match="empty"):
        ApiKeys([SecretStr("")])


def test_settings_take_a_comma_separated_list_and_the_single_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_API_KEYS", " new-key , old-key,")
    monkeypatch.setenv("RTML_API_KEY", "single-key")
    settings = ServiceSettings()
    assert [k.get_secret_value() for k in settings.accepted_api_keys] == ["single-key", "new-key", "old-key"]
    assert "new-key" not in repr(settings) and "single-key" not in repr(settings)
    monkeypatch.delenv("RTML_API_KEY")
    monkeypatch.setenv("RTML_API_KEYS", "only-key")
    assert [k.get_secret_value() for k in ServiceSettings().accepted_api_keys] == ["only-key"]
    monkeypatch.delenv("RTML_API_KEYS")
    assert ServiceSettings().accepted_api_keys == []
