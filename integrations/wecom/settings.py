"""Settings for one WeCom self-built application (自建应用)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class WeComSettings(BaseModel):
    corp_id: str  # CorpID; also the receive id at the end of every decrypted callback
    agent_id: int  # AgentId of the self-built app
    secret: str  # the app's Secret, for /cgi-bin/gettoken
    token: str = Field(max_length=32)  # callback Token
    encoding_aes_key: str = Field(min_length=43, max_length=43)  # callback EncodingAESKey
    api_base: str = "https://qyapi.weixin.qq.com"  # tests point this at the fake
    timestamp_window_s: int = Field(default=300, gt=0)  # callbacks older or newer than this are refused
