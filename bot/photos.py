"""Count photos kept as evidence (拍照凭证): a local directory, files named by their content hash."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from pathlib import Path
from urllib.parse import urlencode

_REF = re.compile(r"[0-9a-f]{64}\.(?:jpg|jpeg|png|webp)")


def _sig(key: bytes, ref: str, expires: int) -> str:
    mac = hmac.new(key, f"photo:{ref}:{expires}".encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def signed_url(base: str, ref: str, key: bytes, expires: int) -> str:
    """``{base}/photos/{ref}?e=<unix>&s=<mac>``: anyone with the link may see this one photo until it expires
    (review and approval cards carry it); nothing else is reachable with it."""
    return f"{base.rstrip('/')}/photos/{ref}?{urlencode({'e': expires, 's': _sig(key, ref, expires)})}"


def check_signed(ref: str, key: bytes, expires: str | None, sig: str | None, now: float) -> str | None:
    """None when the link is good, else why not (for the log; the answer to the caller is just 403/404)."""
    if not _REF.fullmatch(ref):
        return "not a photo reference"
    if not expires or not expires.isdigit() or not sig:
        return "unsigned"
    if not hmac.compare_digest(_sig(key, ref, int(expires)), sig):
        return "bad signature"
    if int(expires) < now:
        return "expired"
    return None


class PhotoStore:
    def __init__(self, root: Path, retention_days: int = 400) -> None:
        self.root, self.retention_days = root, retention_days

    def save(self, data: bytes, suffix: str = ".jpg") -> str:
        """Store once per content; returns the reference kept with the count."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / digest[:2] / f"{digest}{suffix}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return f"{digest}{suffix}"

    def path(self, ref: str) -> Path:
        name = Path(ref).name
        return self.root / name[:2] / name

    def prune(self, now: float) -> int:
        """Delete photos older than the retention; returns how many."""
        cutoff = now - self.retention_days * 86400
        removed = 0
        for p in self.root.glob("*/*"):
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                removed += 1
        return removed
