"""Settings for one WeCom self-built application (自建应用)."""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, ConfigDict, Field, field_validator


class WeComSettings(BaseModel):
    # a validation error never echoes a value (it may be the secret or the AES key); secrets stay out of repr
    model_config = ConfigDict(hide_input_in_errors=True)

    corp_id: str  # CorpID; also the receive id at the end of every decrypted callback
    agent_id: int  # AgentId of the self-built app
    secret: str = Field(repr=False)  # the app's Secret, for /cgi-bin/gettoken
    token: str = Field(max_length=32, repr=False)  # callback Token
    encoding_aes_key: str = Field(min_length=43, max_length=43, repr=False)  # callback EncodingAESKey
    api_base: str = "https://qyapi.weixin.qq.com"  # tests point this at the fake
    timestamp_window_s: int = Field(default=300, gt=0)  # callbacks older or newer than this are refused

    @field_validator("encoding_aes_key")
    @classmethod
    def _base64(cls, v: str) -> str:
        try:
            if len(base64.b64decode(v + "=", validate=True)) == 32:
                return v
        except binascii.Error:
            pass
        raise ValueError("must be the 43 letters and digits WeCom generated (base64 of a 32-byte key)")
