"""Typed button payloads: pack/unpack round-trips, and any tampering is refused."""

from __future__ import annotations

import dataclasses
import string
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.cards.payload import (
    PAYLOAD_TYPES,
    Approve,
    BadPayload,
    CannotFind,
    ExpiredPayload,
    Payload,
    PayloadTooLong,
    PickReason,
    StartCounting,
    issued_at,
    unpack,
)

KEY = b"pandian-test-key-0123456789abcdef"
OTHER_KEY = b"another-key-0123456789abcdef-xyz"
T0 = 1717230000

ids = st.integers(min_value=0, max_value=2**53)
codes = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=40)
_BY_KIND: dict[object, st.SearchStrategy[object]] = {int: ids, str: codes}


def _payloads() -> st.SearchStrategy[Payload]:
    """Any payload type, with any values its fields allow."""
    strategies = []
    for cls in PAYLOAD_TYPES:
        hints = typing.get_type_hints(cls)
        kwargs = {
            f.name: _BY_KIND.get(hints[f.name], st.lists(ids, max_size=20).map(tuple))
            for f in dataclasses.fields(cls)
        }
        strategies.append(st.builds(cls, **kwargs))
    return st.one_of(strategies)


times = st.integers(min_value=0, max_value=2**40)
# Characters a tamperer might write: everything the format uses, and some it never does.
tamper_chars = st.sampled_from(string.ascii_letters + string.digits + "_-:,.=+/ 中")


@given(_payloads(), times)
def test_pack_unpack_round_trips(p: Payload, t: int) -> None:
    text = p.pack(KEY, issued_at=t)
    assert text.isascii()
    assert unpack(text, KEY) == p
    assert issued_at(text) == t


@given(_payloads(), times, st.data())
def test_any_single_character_change_is_refused(p: Payload, t: int, data: st.DataObject) -> None:
    text = p.pack(KEY, issued_at=t)
    i = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    c = data.draw(tamper_chars.filter(lambda c: c != text[i]))
    with pytest.raises(BadPayload):
        unpack(text[:i] + c + text[i + 1 :], KEY)


@given(_payloads(), times, st.data())
def test_deleting_or_inserting_a_character_is_refused(p: Payload, t: int, data: st.DataObject) -> None:
    text = p.pack(KEY, issued_at=t)
    i = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    with pytest.raises(BadPayload):
        unpack(text[:i] + text[i + 1 :], KEY)
    c = data.draw(tamper_chars)
    j = data.draw(st.integers(min_value=0, max_value=len(text)))
    with pytest.raises(BadPayload):
        unpack(text[:j] + c + text[j:], KEY)


@given(_payloads())
def test_another_key_is_refused(p: Payload) -> None:
    with pytest.raises(BadPayload):
        unpack(p.pack(OTHER_KEY, issued_at=T0), KEY)


def test_format_is_compact_and_readable() -> None:
    text = Approve(42, 1).pack(KEY, issued_at=T0)
    prefix, vid, seq, t, tag = text.split(":")
    assert (prefix, vid, seq, t) == ("ap", "42", "1", str(T0))
    assert len(tag) == 14  # 10 bytes, base64url, no padding
    assert StartCounting((1, 2, 3)).pack(KEY, issued_at=T0).startswith("sc:1,2,3:")
    assert unpack(StartCounting(()).pack(KEY, issued_at=T0), KEY) == StartCounting(())


def _forge(body: str) -> str:
    """A correctly signed text with any body: what a bug (or a later version) might produce."""
    from bot.cards.payload import _tag

    return f"{body}:{_tag(KEY, body)}"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (f"zz:1:{T0}", "unknown payload prefix"),
        (f"ap:1:{T0}", "expects 2 fields"),
        (f"ap:1:2:3:{T0}", "expects 2 fields"),
        (f"ap:x:2:{T0}", "not a valid int"),
        (f"ap:01:2:{T0}", "not a valid int"),
        (f"ap:-1:2:{T0}", "not a valid int"),
        (f"pr:1:a b:{T0}", "not a valid str"),
        (f"pr:1::{T0}", "not a valid str"),
        (f"sc:1,,2:{T0}", "not a valid ints"),
        ("ap:1:2:soon", "expects 2 fields and a time"),
        ("", "unknown payload prefix"),
        ("ap", "has no issue time"),
    ],
)
def test_signed_but_malformed_is_refused(body: str, why: str) -> None:
    with pytest.raises(BadPayload, match=why):
        unpack(_forge(body), KEY)


@pytest.mark.parametrize("text", ["", "ap", "ap:1:2", "ap:1:2:3:4:5:6", "ä:b", "::::"])
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(BadPayload):
        unpack(text, KEY)


def test_old_cards_are_refused() -> None:
    text = CannotFind(7).pack(KEY, issued_at=T0)
    day = 24 * 3600
    assert unpack(text, KEY, now=T0 + day, max_age=day) == CannotFind(7)
    with pytest.raises(ExpiredPayload):
        unpack(text, KEY, now=T0 + day + 1, max_age=day)
    with pytest.raises(ExpiredPayload):  # issued "in the future"
        unpack(text, KEY, now=T0 - day - 1, max_age=day)


def test_length_is_checked_against_the_platform_limit() -> None:
    p = StartCounting(tuple(range(1000, 1200)))
    with pytest.raises(PayloadTooLong):
        p.pack(KEY, issued_at=T0, max_bytes=1024)
    assert len(PickReason(2**40, "unrecorded_loss").pack(KEY, issued_at=2**40, max_bytes=128)) <= 128


@pytest.mark.parametrize(
    "bad",
    [Approve(-1, 1), Approve(True, 1), PickReason(1, "a:b"), PickReason(1, ""), PickReason(1, "原因")],  # type: ignore[arg-type]
)
def test_packing_refuses_values_it_could_not_read_back(bad: Payload) -> None:
    with pytest.raises(ValueError):
        bad.pack(KEY, issued_at=T0)


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        Approve(1, 1).pack(b"short", issued_at=T0)


def test_prefixes_are_unique_and_required() -> None:
    with pytest.raises(TypeError):

        class Dup(Payload, prefix="ap"):
            pass

    with pytest.raises(TypeError):

        class NoPrefix(Payload):
            pass
