"""Settings for one Feishu self-built app (企业自建应用)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Feishu re-pushes an event it got no 200 for after 15 s, 5 min, 1 h and 6 h (shared/research/platforms.md
# §2.1): the last push comes at most 15 s + 5 min + 1 h + 6 h = 7 h 5 min 15 s after the first. Eight hours
# cover that and a clock off by some minutes.
RETRY_WINDOW_FLOOR_S = 8 * 3600


class FeishuSettings(BaseModel):
    # a validation error never echoes a value (it may be a secret); secrets stay out of repr
    model_config = ConfigDict(hide_input_in_errors=True)

    app_id: str
    app_secret: str = Field(repr=False)
    verification_token: str = Field(repr=False)
    # Optional on Feishu's side, but without it bodies are plaintext and unsigned: set it.
    encrypt_key: str = Field(default="", repr=False)
    # Tests point this at a fake on 127.0.0.1 (shared/research/platforms.md §5.1).
    domain: str = "https://open.feishu.cn"
    mode: Literal["webhook", "websocket"] = "webhook"
    # How far X-Lark-Request-Timestamp may be from now. Not 300 s: Feishu re-pushes an unanswered event for
    # hours, and nothing promises the re-push a fresh timestamp (integrations/feishu/webhook.py,
    # FeishuWebhook._verify_signature). At least RETRY_WINDOW_FLOOR_S, so a genuine late retry is never refused.
    timestamp_window_s: int = Field(default=24 * 3600, ge=RETRY_WINDOW_FLOOR_S)
    request_timeout_s: float = Field(default=10.0, gt=0)
