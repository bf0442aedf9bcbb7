"""Pure helpers of the DingTalk client: outTrackId from an idempotency key, and the string-only cardParamMap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.channel import ChannelError
from integrations.dingtalk.client import MAX_OUT_TRACK_ID, check_param_map, out_track_id


def test_plain_short_keys_are_kept() -> None:
    assert out_track_id("cc-20240601-42-manager01") == "cc-20240601-42-manager01"


def test_other_keys_are_cleaned_and_suffixed_with_a_digest() -> None:
    track = out_track_id("approval:42/manager 01")
    assert track.startswith("approval-42-manager-01-") and len(track) == len("approval-42-manager-01-") + 16


@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=300))
def test_out_track_ids_are_safe_stable_and_distinct(a: str, b: str) -> None:
    ta = out_track_id(a)
    assert ta == out_track_id(a)
    assert 0 < len(ta) <= MAX_OUT_TRACK_ID
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in ta)
    if a != b:
        assert ta != out_track_id(b)


def test_param_map_must_be_strings() -> None:
    assert check_param_map({"a": "1", "b": "[]"}) == {"a": "1", "b": "[]"}
    with pytest.raises(ChannelError) as exc:
        check_param_map({"a": "1", "n": 2, "f": False, "l": ["x"]})
    assert str(exc.value) == "cardParamMap values must be strings: ['f', 'l', 'n']"
    assert not exc.value.retryable
