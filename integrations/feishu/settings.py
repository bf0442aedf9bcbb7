"""Settings for one Feishu self-built app (企业自建应用)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class FeishuSettings(BaseModel):
    app_id: str
    app_secret: str = Field(repr=False)
    verification_token: str = Field(repr=False)
    # Optional on Feishu's side, but without it bodies are plaintext and unsigned: set it.
    encrypt_key: str = Field(default="", repr=False)
    # Tests point this at a fake on 127.0.0.1 (shared/research/platforms.md §5.1).
    domain: str = "https://open.feishu.cn"
    mode: Literal["webhook", "websocket"] = "webhook"
    timestamp_window_s: int = Field(default=300, gt=0)
    request_timeout_s: float = Field(default=10.0, gt=0)
