"""The WeCom fake lives in the package (``integrations.wecom.sandbox``) because ``pandian demo`` plays its
working day against it; the tests import it from here as before."""

from integrations.wecom.sandbox import (
    SignedRequest,
    WeComFakeState,
    WeComSimulator,
    build_wecom_fake_app,
    encrypt_raw,
    frame,
)

__all__ = [
    "SignedRequest",
    "WeComFakeState",
    "WeComSimulator",
    "build_wecom_fake_app",
    "encrypt_raw",
    "frame",
]
