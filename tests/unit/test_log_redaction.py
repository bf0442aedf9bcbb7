"""Signatures never reach the access log: ``bot.logs.redact_query`` (the access logger's rule)."""

from __future__ import annotations

import pytest

from bot.logs import redact_query


@pytest.mark.parametrize(
    ("seen", "logged"),
    [
        ("/photos/cp-1.jpg?e=1796004060&s=Zm9vYmFy", "/photos/cp-1.jpg?e=1796004060&s=-"),
        (
            "/wecom/callback?msg_signature=ab12&timestamp=1&nonce=2",
            "/wecom/callback?msg_signature=-&timestamp=1&nonce=2",
        ),
        (
            "/x?S=upper&sig=1&sign=2&signature=3&token=4&access_token=5",
            "/x?S=-&sig=-&sign=-&signature=-&token=-&access_token=-",
        ),
        ("/healthz", "/healthz"),
        ("/x?s", "/x?s"),  # a key without a value has nothing to hide
        ("/x?e=1&seconds=2", "/x?e=1&seconds=2"),
    ],
)
def test_signatures_are_left_out(seen: str, logged: str) -> None:
    assert redact_query(seen) == logged
