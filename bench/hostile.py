"""Benchmark: the server under hostile traffic (issue 10 §6). Loopback only, bounded in time, stops by itself.

One server process (``bot.app.build_app`` with WeCom configured, run like ``pandian serve``: migrations in a
child, ``web.run_app`` with its access log) on a temporary SQLite database. Nothing the bench sends is signed:
every request is one a stranger without credentials could send.

1. **Big bodies.** ``--bodies`` concurrent POSTs of ``--body-mib`` MiB to ``/wecom/callback``, first with a
   ``Content-Length``, then chunked (no length). Each client sends as fast as the server takes the bytes and
   stops when an answer (or a closed connection) comes back. Figures: the server's VmRSS before, its peak
   (VmHWM from ``/proc/<pid>/status``, the kernel's own high-water mark) after each wave, and what each client
   got (``413``, ``401``, a reset...).
2. **Slow connections.** ``--slow`` connections that send their headers one line a second ("slow headers"),
   then ``--slow`` that send whole headers and then a byte of body a second ("slow body"). Figures: how long
   the server kept them open (median and longest), and how many were still open when the bench stopped
   watching (``--observe`` seconds).

Targets: the peak grows by less than ``TARGET_GROWTH_MB`` over the baseline, and every slow connection is
closed by the server within ``--observe`` seconds. The exit status is 0 only when both are met. The server
dies with the bench (SIGTERM, then SIGKILL; ``PR_SET_PDEATHSIG`` covers a killed bench).

    .venv/bin/python bench/hostile.py            # 12 x 24 MiB, 200 + 200 slow connections, about 30 s
    .venv/bin/python bench/hostile.py --smoke    # 3 x 4 MiB, 20 + 20 slow connections: a smoke run

Measured on a 2-core machine. Before issue 10: VmRSS 94 MB; 12 x 24 MiB with a length: peak 354 MB (+259 MB),
chunked 487 MB (+393 MB); slow headers and slow bodies: none of 200 + 200 closed in 20 s. After: +6 MB both
ways (every body answered 413); slow headers all closed at 5.0 s, slow bodies within 6.1 s (most answered 503
at once: the bodies in flight were full).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_GROWTH_MB = 100.0
PATH = "/wecom/callback?msg_signature=0&timestamp=0&nonce=0"
CHUNK = b"<" * 65536
WECOM = {
    "corp_id": "ww_bench",
    "agent_id": 1000002,
    "secret": "bench-secret",
    "token": "benchtok3n",
    "encoding_aes_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    "api_base": "http://127.0.0.1:9",  # nothing is sent: no message is ever queued
}


# ============================================================================================ the server (child)


def _serve(parent: int, spec: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):  # SIGTERM this process when the bench dies, even by SIGKILL
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    from aiohttp import web

    from bot.app import build_app
    from bot.logs import setup_logging
    from core import migrate
    from core.clock import SystemClock
    from core.config import Settings

    settings = Settings(
        database_url=spec["database_url"],
        wecom=WECOM,
        schedule={"enabled": False},
        server={"photos_dir": spec["photos_dir"], "payload_secret": "bench-payload-secret-0123456789"},
    )
    setup_logging("text")
    migrate.upgrade_in_child(settings.database_url)
    app = build_app(settings, clock=SystemClock())  # a benchmark is a composition root
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    Path(spec["ready"]).write_text(json.dumps({"port": sock.getsockname()[1], "pid": os.getpid()}))
    web.run_app(app, sock=sock, print=None, shutdown_timeout=5)


# ============================================================================================ the bench (parent)


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def _spawn(workdir: Path, within: float) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The server process, once it has written its port (migrations done)."""
    spec = {
        "database_url": f"sqlite+aiosqlite:///{workdir / 'hostile.db'}",
        "photos_dir": str(workdir / "photos"),
        "ready": str(workdir / "server.ready"),
    }
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(os.getpid()), json.dumps(spec)],
            cwd=workdir,  # whatever the server writes lands in the scratch folder
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + within
    while not Path(spec["ready"]).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"the server did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    return proc, json.loads(Path(spec["ready"]).read_text())["port"], log_path


async def _start(workdir: Path, within: float = 120.0) -> tuple[subprocess.Popen[bytes], int, Path]:
    proc, port, log_path = await asyncio.to_thread(_spawn, workdir, within)
    deadline = time.monotonic() + within
    while True:  # until /healthz answers
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            line = await reader.readline()
            writer.close()
            if line.startswith(b"HTTP/1.1 200"):
                return proc, port, log_path
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"the server is not healthy:\n{log_path.read_text()[-3000:]}")
        await asyncio.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _big_body(port: int, size: int, chunked: bool, limit_s: float) -> str:
    """One client sending ``size`` bytes as fast as the server reads them; what it got back."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return type(exc).__name__
    head = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    answer = asyncio.ensure_future(reader.readline())
    try:
        async with asyncio.timeout(limit_s):
            writer.write(head.encode())
            sent = 0
            while sent < size and not answer.done():
                writer.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK)
                await writer.drain()
                sent += len(CHUNK)
            if chunked and not answer.done():
                writer.write(b"0\r\n\r\n")
            line = await answer
        return line.split()[1].decode() if line else "closed"
    except TimeoutError:
        return "no answer"
    except (OSError, IndexError) as exc:
        if answer.done() and not answer.cancelled() and answer.exception() is None and answer.result():
            return answer.result().split()[1].decode()  # answered, then closed while we were still sending
        return type(exc).__name__
    finally:
        answer.cancel()
        writer.close()


async def _slow(port: int, kind: str, observe_s: float) -> float | None:
    """One slow client: seconds until the server closed it, None when it was still open after ``observe_s``."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0.0
    if kind == "headers":
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
    else:
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n".encode())

    async def closed() -> None:
        while await reader.read(65536):  # an answer (408, 503...) may come first; the end is what counts
            pass

    async def dribble() -> None:
        while True:
            await asyncio.sleep(1.0)
            writer.write(b"X-Slow: 1\r\n" if kind == "headers" else b"<")
            await writer.drain()

    waiting = asyncio.ensure_future(closed())
    sending = asyncio.ensure_future(dribble())
    try:
        await asyncio.wait([waiting, sending], timeout=observe_s, return_when=asyncio.FIRST_COMPLETED)
        return time.monotonic() - started if (waiting.done() or sending.done()) else None
    finally:
        waiting.cancel()
        sending.cancel()
        writer.close()


def _seconds(closed: list[float | None]) -> str:
    done = [s for s in closed if s is not None]
    still = len(closed) - len(done)
    if not done:
        return f"none closed; {still} still open"
    return (
        f"closed {len(done)}: median {statistics.median(done):.1f} s, longest {max(done):.1f} s; "
        f"{still} still open"
    )


async def run(args: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    with tempfile.TemporaryDirectory(prefix="pandian-hostile-") as tmp:
        proc, port, log_path = await _start(Path(tmp))
        ok = True
        try:
            base = _status_mb(proc.pid, "VmRSS")
            print(f"server pid {proc.pid}: VmRSS {base:.0f} MB when healthy")
            size = args.body_mib * 1024 * 1024
            for chunked in (False, True):
                got = await asyncio.gather(
                    *(_big_body(port, size, chunked, args.body_timeout) for _ in range(args.bodies))
                )
                await asyncio.sleep(0.5)
                peak = _status_mb(proc.pid, "VmHWM")
                how = "chunked" if chunked else "with Content-Length"
                answers = ", ".join(f"{k} x{n}" for k, n in sorted(Counter(got).items()))
                print(
                    f"{args.bodies} x {args.body_mib} MiB {how}: peak VmHWM {peak:.0f} MB "
                    f"(+{peak - base:.0f} MB), answers: {answers}"
                )
                ok &= peak - base < TARGET_GROWTH_MB
            for kind in ("headers", "body"):
                closed = await asyncio.gather(*(_slow(port, kind, args.observe) for _ in range(args.slow)))
                print(f"{args.slow} slow {kind} (watched {args.observe:.0f} s): {_seconds(closed)}")
                ok &= all(s is not None for s in closed)
            print(f"server VmRSS {_status_mb(proc.pid, 'VmRSS'):.0f} MB at the end, peak "
                  f"{_status_mb(proc.pid, 'VmHWM'):.0f} MB")  # fmt: skip
        finally:
            _stop(proc)
        print(f"targets ({'met' if ok else 'MISSED'}): peak growth < {TARGET_GROWTH_MB:.0f} MB, "
              f"every slow connection closed by the server within {args.observe:.0f} s")  # fmt: skip
        if args.log:
            print(log_path.read_text()[-4000:])
        return 0 if ok else 1


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]), json.loads(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bodies", type=int, default=12, help="concurrent big bodies (12)")
    p.add_argument("--body-mib", type=int, default=24, help="size of each big body in MiB (24)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a big-body client waits (30)")
    p.add_argument("--slow", type=int, default=200, help="slow connections of each kind (200)")
    p.add_argument("--observe", type=float, default=20.0, help="seconds slow connections are watched (20)")
    p.add_argument(
        "--quick",
        "--smoke",
        dest="quick",
        action="store_true",
        help="3 x 4 MiB, 20 slow of each kind, watched 12 s (bench/smoke runs it so)",
    )
    p.add_argument("--log", action="store_true", help="print the tail of the server's log at the end")
    args = p.parse_args()
    if args.quick:
        args.bodies, args.body_mib, args.slow, args.observe = 3, 4, 20, 12.0
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
