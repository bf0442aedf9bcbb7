"""DingTalk settings: the app's credentials, the robot, the card template and the API base URLs.

Base URLs come from configuration so tests can point them at a local fake (platforms.md §5.1).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class DingTalkSettings(BaseModel):
    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)  # errors never echo a value

    app_key: str = Field(min_length=1)  # also the Stream clientId
    app_secret: SecretStr  # signs HTTP-mode robot callbacks; also the Stream clientSecret
    robot_code: str = Field(min_length=1)  # usually equal to app_key for an internal-app robot
    card_template_id: str = Field(min_length=1)  # "xxxx.schema", published in the Card Builder
    api_base: str = "https://api.dingtalk.com"
    oapi_base: str = "https://oapi.dingtalk.com"
    mode: Literal["http", "stream"] = "http"  # how callbacks arrive; "stream" needs dingtalk-stream (later)
    card_callback_route_key: str | None = (
        None  # HTTP mode: the key registered with /v1.0/card/callbacks/register
    )
    timestamp_window_s: int = Field(default=3600, gt=0)  # robot callbacks: |now - timestamp| <= 1 h
    request_timeout_s: float = Field(default=10.0, gt=0)

    def secret(self) -> str:
        return self.app_secret.get_secret_value()
