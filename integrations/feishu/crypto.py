"""Feishu webhook crypto (the verifying side; the platform's side lives in ``tests/fakes/feishu.py``), about 20 lines, so the inbound path never imports ``lark_oapi``.

- Body ``{"encrypt": b64(iv + AES-256-CBC(plaintext))}``, key = sha256(encrypt_key), IV = the first 16
  bytes of the decoded ciphertext, PKCS7 padding to 16 bytes.
- ``X-Lark-Signature = sha256(timestamp + nonce + encrypt_key + raw_body).hexdigest()``.

AES comes from pycryptodome (``Crypto``), which lark-oapi itself requires, so it adds no dependency.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from Crypto.Cipher import AES

_BLOCK = 16


class DecryptError(ValueError):
    pass


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode() + body).hexdigest()


def signature_matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


def decrypt(encrypt_key: str, encrypted: str) -> bytes:
    try:
        raw = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecryptError("not base64") from exc
    if len(raw) < 2 * _BLOCK or len(raw) % _BLOCK:
        raise DecryptError("bad ciphertext length")
    key = hashlib.sha256(encrypt_key.encode()).digest()
    padded = AES.new(key, AES.MODE_CBC, raw[:_BLOCK]).decrypt(raw[_BLOCK:])
    pad = padded[-1]
    if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes([pad]) * pad:
        raise DecryptError("bad padding")
    return padded[:-pad]
