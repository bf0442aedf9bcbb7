"""Count photos kept as evidence (拍照凭证): a local directory, files named by their content hash."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path


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

    def prune(self, now: float | None = None) -> int:
        """Delete photos older than the retention; returns how many."""
        cutoff = (now or time.time()) - self.retention_days * 86400
        removed = 0
        for p in self.root.glob("*/*"):
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                removed += 1
        return removed
