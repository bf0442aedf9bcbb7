"""Benchmark: signed platform callbacks against the real server: ack latency, throughput, memory.

What it does (issue 4 §8), with each server in its own process so its memory is its alone:

1. **Setup.** A database template (a temporary SQLite file, or a scratch PostgreSQL database created beside
   the one ``--database-url`` names), migrated (``core.migrate.upgrade``) and seeded with 500 registered
   users, each with a WeCom, Feishu and DingTalk id. Every server gets a fresh copy of it, so the backlog one
   run leaves behind never spills into the next; all copies are dropped at the end. One process serves the
   three fake platform APIs (``tests.fakes``), so the server's outbox really delivers every reply.
2. **Ack latency, open loop.** ``bot.app.build_app`` with all selected platforms on, run like ``pandian
   serve`` (migrations in a child process, INFO logging with the access log, ``web.run_app``). Per run: 200 warm-up
   callbacks, then one platform's callbacks at a fixed ``--rate`` for ``--seconds``, each sent on schedule
   whatever the earlier ones are doing: WeCom encrypted text messages, Feishu encrypted
   ``im.message.receive_v1`` events, DingTalk signed robot messages, built by the simulators in
   ``tests.fakes`` with a unique message id each (nothing is deduplicated). Senders cycle through 1,000 ids:
   every other one is registered (``/帮助`` or ``/任务``), the rest get "not registered". Latency runs from
   the request's start to the end of the answer. The server's background work and outbox run meanwhile;
   after the run the bench waits (``--drain-timeout``) until everything accepted is processed and sent, and
   says what was left. The server's own ``/metrics`` ack quantiles (its last ≤ 5,000 acks) are the
   cross-check.
3. **Throughput, closed loop.** ``--concurrency`` clients send pre-built callbacks back to back for
   ``--throughput-seconds``, against a fresh server and against a bare aiohttp app that reads the body and
   answers "ok" (same process model, same logging, same payloads), alternately. The ratio is the target.
   Also shown: end to end (callbacks / (run + drain)), the server's CPU per callback from
   ``/proc/<pid>/stat`` (steadier than wall time on a shared machine), and the load generator's own CPU use
   (near 100 % means the client, not the server, set the pace).
4. **Memory.** A fresh server per configuration (none, WeCom, WeCom + DingTalk, all three): VmRSS from
   ``/proc/<pid>/status`` when healthy, after a warm-up, after ``--seconds`` of mixed load at ``--rate`` and
   the drain, and the peak (VmHWM); the time until ``/healthz`` answered; whether ``lark_oapi`` was imported.

Each latency and throughput figure is the median of ``--repeat`` runs. Servers and fakes die with the bench,
Ctrl-C included (SIGTERM, then SIGKILL; ``PR_SET_PDEATHSIG`` covers a killed bench). The exit status is 0
only when every target is met. On a shared machine run it niced and read the "send lag" column: a late
load generator means the figures are the machine's, not the server's.

    nice -n 5 .venv/bin/python bench/webhook.py                  # SQLite; 20-45 min while targets are missed
    nice -n 5 .venv/bin/python bench/webhook.py --quick          # one short run of each: a smoke test
    nice -n 5 .venv/bin/python bench/webhook.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench
    .venv/bin/python bench/webhook.py --quick --platform wecom --phases latency --profile /tmp/prof
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PLATFORMS = ("wecom", "feishu", "dingtalk")
MEMORY_CONFIGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("none", ()),
    ("wecom", ("wecom",)),
    ("wecom+dingtalk", ("wecom", "dingtalk")),
    ("all three", PLATFORMS),
)
PATHS = {"wecom": "/wecom/callback", "feishu": "/feishu/webhook", "dingtalk": "/dingtalk/robot"}
SENDERS = 1000  # sender ids cycle through this many; even ones are registered users
TARGET_P99_MS = 200.0
TARGET_RATIO = 0.40
TARGET_MB_WECOM_DINGTALK = 150.0
TARGET_MB_FEISHU = 300.0
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench"

# The credentials the fakes in tests/fakes accept, and the keys their simulators sign with.
WECOM_TOKEN, WECOM_AES_KEY = "benchtok3n", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
FEISHU = {
    "app_id": "cli_test",
    "app_secret": "secret",
    "verification_token": "v-token",
    "encrypt_key": "enc-key",
}
DINGTALK = {"app_key": "dingappkey", "app_secret": "appsecret", "robot_code": "dingrobotcode"}


# ============================================================================================ child processes


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when the bench dies, even by SIGKILL (Linux ``prctl(PR_SET_PDEATHSIG)``)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the bench died before prctl took effect
        os._exit(1)


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        return None


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    Path(tmp).write_text(json.dumps(data))
    os.replace(tmp, path)


def _logging(fmt: str = "text") -> None:
    """What ``pandian serve`` configures (``bot.logs.setup_logging``): INFO to stderr, aiohttp's access log
    included; plain ``basicConfig`` on a checkout from before that module."""
    try:
        from bot.logs import setup_logging
    except ImportError:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    else:
        setup_logging(fmt)


def _child_server(spec: dict[str, Any]) -> None:
    """``pandian serve`` on a pre-bound socket: migrations (in a child, as serve does), ``build_app``,
    ``web.run_app``."""
    started = time.time()
    from aiohttp import web

    from bot.app import build_app
    from core import migrate
    from core.clock import SystemClock
    from core.config import Settings

    settings = Settings(database_url=spec["database_url"], server=spec["server"], **spec["platforms"])
    _logging(getattr(settings.server, "log_format", "text"))
    migrate.upgrade_in_child(settings.database_url)  # as pandian serve does
    app = build_app(settings, clock=SystemClock())  # a benchmark is a composition root
    sock = _listening_socket()
    _write_json(
        spec["ready"], {"port": sock.getsockname()[1], "pid": os.getpid(), "built_s": time.time() - started}
    )
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        web.run_app(app, sock=sock, print=None, shutdown_timeout=5)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(spec["profile"])
        _write_json(spec["ready"] + ".exit", {"lark_oapi": "lark_oapi" in sys.modules})


def _child_bare(spec: dict[str, Any]) -> None:
    """The yardstick: aiohttp alone, reading the body and answering "ok", with the same logging."""
    _logging()
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application(client_max_size=25 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", ok)
    sock = _listening_socket()
    _write_json(spec["ready"], {"port": sock.getsockname()[1], "pid": os.getpid(), "built_s": 0.0})
    web.run_app(app, sock=sock, print=None, shutdown_timeout=5)


def _child_fakes(spec: dict[str, Any]) -> None:
    """The three fake platform APIs (tests/fakes), each on its own port."""
    from aiohttp import web

    from tests.fakes.dingtalk import DingTalkFakeState, build_dingtalk_fake_app
    from tests.fakes.feishu import FeishuFake, build_feishu_fake_app
    from tests.fakes.wecom import WeComFakeState, build_wecom_fake_app

    # 5 sends per second per receiver is the real Feishu limit; the bench's senders stay well below it.
    apps = {
        "wecom": build_wecom_fake_app(WeComFakeState()),
        "feishu": build_feishu_fake_app(FeishuFake()),
        "dingtalk": build_dingtalk_fake_app(DingTalkFakeState()),
    }

    async def serve() -> None:
        runners, ports = [], {}
        for name, app in apps.items():
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            sock = _listening_socket()
            await web.SockSite(runner, sock).start()
            runners.append(runner)
            ports[name] = sock.getsockname()[1]
        _write_json(spec["ready"], {"ports": ports, "pid": os.getpid()})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for runner in runners:
            await runner.cleanup()

    asyncio.run(serve())


def _child_main(kind: str, parent: int, spec_json: str) -> None:
    _die_with_parent(parent)
    spec = json.loads(spec_json)
    {"server": _child_server, "bare": _child_bare, "fakes": _child_fakes}[kind](spec)


# ============================================================================================ parent: processes


@dataclass
class Child:
    kind: str
    label: str
    proc: subprocess.Popen[bytes]
    ready_path: str
    log_path: str
    spawned: float
    info: dict[str, Any] = field(default_factory=dict)
    ready_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.info['port']}"

    def exit_info(self) -> dict[str, Any]:
        return _read_json(self.ready_path + ".exit") or {}


class Children:
    """Every process the bench started, so each one is stopped, by its pid, whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.live: list[Child] = []
        self._seq = itertools.count(1)

    def _spawn(self, kind: str, label: str, spec: dict[str, Any]) -> Child:
        n = next(self._seq)
        ready = str(self.workdir / f"{kind}-{n}.ready")
        log_path = str(self.workdir / f"{kind}-{n}.log")
        spec = {**spec, "ready": ready}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--child", kind, str(os.getpid()), json.dumps(spec)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the bench only; the bench stops its children
            )
        child = Child(kind, label, proc, ready, log_path, time.monotonic())
        self.live.append(child)
        return child

    async def start(self, kind: str, label: str, spec: dict[str, Any], within: float = 120.0) -> Child:
        child = self._spawn(kind, label, spec)
        deadline = time.monotonic() + within
        while (info := _read_json(child.ready_path)) is None:
            if child.proc.poll() is not None:
                raise RuntimeError(
                    f"{kind} {label} exited with {child.proc.returncode}:\n{_tail(child.log_path)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} {label} not ready after {within:.0f} s:\n{_tail(child.log_path)}")
            await asyncio.sleep(0.02)
        child.info = info
        if kind != "fakes":
            await _wait_healthy(child, deadline)
        child.ready_s = time.monotonic() - child.spawned
        return child

    async def stop(self, child: Child, grace: float = 15.0) -> None:
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(child.proc.wait, grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.proc.wait()
        if child in self.live:
            self.live.remove(child)

    def kill_all(self) -> None:
        """Synchronous last resort (Ctrl-C, errors): SIGTERM each, a short grace, then SIGKILL."""
        for child in self.live:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for child in self.live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.proc.wait()
        self.live.clear()


def _tail(path: str, n: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


async def _wait_healthy(child: Child, deadline: float) -> None:
    import aiohttp

    path = "/healthz" if child.kind == "server" else "/"
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(child.url + path) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{child.label} never became healthy:\n{_tail(child.log_path)}")
            await asyncio.sleep(0.05)


def _proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MB."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads)."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    return 0.0


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ============================================================================================ parent: database


class Database:
    """A migrated, seeded template and a fresh copy of it for every server, so a backlog one run leaves
    behind (unprocessed events, unsent outbox rows) never spills into the next. SQLite: file copies in the
    working directory (or beside the file ``--database-url`` names). PostgreSQL: scratch databases
    ``<name>_webhook_<pid>_<n>`` created beside the named one from a template; all dropped at the end."""

    def __init__(self, requested: str | None, workdir: Path) -> None:
        from sqlalchemy.engine import make_url

        from core.db import normalise_url

        self.url = make_url(normalise_url(requested or f"sqlite:///{workdir / 'bench.db'}"))
        self.kind = self.url.get_backend_name()
        self._n = itertools.count(1)
        self._made: list[str] = []
        if self.kind == "sqlite":
            path = Path(self.url.database or "")
            if not requested:
                self._dir, self._stem = workdir, "bench"
            else:
                self._dir, self._stem = path.parent, f"{path.stem}-webhook-{os.getpid()}"
            self.template = self._sqlite(0)
        else:
            self._stem = f"{self.url.database or 'bench'}_webhook_{os.getpid()}"
            self._admin = self.url.set(drivername="postgresql", database="postgres").render_as_string(
                hide_password=False
            )
            self.template = self.url.set(database=f"{self._stem}_0").render_as_string(hide_password=False)

    def _sqlite(self, n: int) -> str:
        path = self._dir / f"{self._stem}-{n}.db"
        self._made.append(str(path))
        return self.url.set(database=str(path)).render_as_string(hide_password=False)

    async def _pg(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create_template(self) -> None:
        if self.kind == "postgresql":
            name = f"{self._stem}_0"
            await self._pg(f'DROP DATABASE IF EXISTS "{name}"')
            await self._pg(f'CREATE DATABASE "{name}"')
            self._made.append(name)
        await _migrate_and_seed(self.template)

    async def fresh(self) -> str:
        n = next(self._n)
        if self.kind == "sqlite":
            url = self._sqlite(n)
            src = Path(self.template.split("///", 1)[1])
            await asyncio.to_thread(shutil.copyfile, src, self._made[-1])
            return url
        name = f"{self._stem}_{n}"
        await self._pg(f'CREATE DATABASE "{name}" TEMPLATE "{self._stem}_0"')
        self._made.append(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    async def drop_all(self) -> None:
        for made in reversed(self._made):
            with contextlib.suppress(Exception):
                if self.kind == "sqlite":
                    _unlink_sqlite(made)
                else:
                    await self._pg(f'DROP DATABASE IF EXISTS "{made}" WITH (FORCE)')
        self._made.clear()


def _unlink_sqlite(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


async def _migrate_and_seed(url: str) -> None:
    from core import migrate
    from core.db import make_engine, make_sessionmaker
    from core.models import Team, User

    engine = make_engine(url)
    try:
        await migrate.upgrade(engine)
        async with make_sessionmaker(engine)() as s, s.begin():
            team = Team(name="压测组")
            s.add(team)
            await s.flush()
            s.add_all(
                User(
                    employee_no=f"B{i:04d}",
                    name=f"压测员{i}",
                    roles=["counter"],
                    team_id=team.id,
                    wecom_userid=_sender("wecom", i),
                    feishu_open_id=_sender("feishu", i),
                    dingtalk_userid=_sender("dingtalk", i),
                )
                for i in range(0, SENDERS, 2)
            )
    finally:
        await engine.dispose()


def _sender(platform: str, i: int) -> str:
    return {"wecom": f"bw{i}", "feishu": f"ou_bench{i}", "dingtalk": f"bd{i}"}[platform]


# ============================================================================================ parent: callbacks


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, str] | None
    headers: dict[str, str]
    body: bytes


class Callbacks:
    """Signed callbacks as each platform sends them, built by the simulators in tests/fakes."""

    def __init__(self) -> None:
        from tests.fakes.dingtalk import DingTalkSimulator
        from tests.fakes.feishu import FeishuSimulator
        from tests.fakes.wecom import WeComFakeState, WeComSimulator

        w = WeComFakeState()
        self.wecom = WeComSimulator(WECOM_TOKEN, WECOM_AES_KEY, w.corp_id, w.agent_id)
        self.feishu = FeishuSimulator(
            encrypt_key=FEISHU["encrypt_key"], verification_token=FEISHU["verification_token"],
            app_id=FEISHU["app_id"],
        )  # fmt: skip
        self.dingtalk = DingTalkSimulator(DINGTALK["app_secret"], robot_code=DINGTALK["robot_code"])
        self._n = itertools.count(int(time.time() * 1000) * 1000)  # unique message ids, run after run

    def make(self, platform: str) -> Call:
        n = next(self._n)
        i = n % SENDERS
        user = _sender(platform, i)
        text = ("/帮助", "/任务")[(n // SENDERS) % 2] if i % 2 == 0 else "/帮助"  # registered: help or tasks
        if platform == "wecom":
            req = self.wecom.text(user, text, msg_id=n, timestamp=int(time.time()))
            return Call("POST", PATHS["wecom"], req.query, {"Content-Type": "text/xml"}, req.body)
        if platform == "feishu":
            headers, body = self.feishu.wire(self.feishu.text(user, text, message_id=f"om_bench_{n}"))
            return Call("POST", PATHS["feishu"], None, headers, body)
        payload = self.dingtalk.text(text, sender=user, msg_id=f"msgbench{n}")
        headers, body = self.dingtalk.signed(payload)
        return Call("POST", PATHS["dingtalk"], None, headers | {"Content-Type": "application/json"}, body)

    def cycle(self, platforms: tuple[str, ...]) -> Iterator[Call]:
        for p in itertools.cycle(platforms):
            yield self.make(p)


HEALTHZ = Call("GET", "/healthz", None, {}, b"")


# ============================================================================================ parent: load


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)  # open loop: how late each request left
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0

    def err(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1


def _q(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _one(session: Any, base: str, call: Call, res: LoadResult) -> None:
    import aiohttp

    started = time.perf_counter()
    try:
        async with session.request(
            call.method, base + call.path, params=call.params, headers=call.headers, data=call.body or None
        ) as resp:
            await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        res.err(type(exc).__name__)
        res.latencies_ms.append((time.perf_counter() - started) * 1000)  # a timeout counts as its 60 s
        return
    res.latencies_ms.append((time.perf_counter() - started) * 1000)
    if status == 200:
        res.ok += 1
    else:
        res.err(f"HTTP {status}")


async def open_loop(base: str, calls: Iterator[Call], rate: float, seconds: float, pid: int) -> LoadResult:
    """``rate`` requests a second on schedule, whatever the earlier ones are doing (no coordinated omission
    on the sending side: a slow server makes requests pile up, it does not slow the sender down)."""
    import aiohttp

    res = LoadResult()
    n = max(1, int(rate * seconds))
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks: set[asyncio.Task[None]] = set()
        cpu0, scpu0 = _own_cpu(), _cpu_seconds(pid)
        t0 = loop.time() + 0.05
        for i in range(n):
            target = t0 + i / rate
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            res.lag_ms.append(max(0.0, loop.time() - target) * 1000)
            call = next(calls)  # built now: fresh timestamp, like a platform's
            task = asyncio.create_task(_one(session, base, call, res))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            res.sent += 1
        if tasks:
            await asyncio.wait(set(tasks))
        res.wall_s = loop.time() - t0
        res.client_cpu_s, res.server_cpu_s = _own_cpu() - cpu0, _cpu_seconds(pid) - scpu0
    return res


async def closed_loop(base: str, calls: list[Call], concurrency: int, seconds: float, pid: int) -> LoadResult:
    """``concurrency`` clients, each sending its next callback as soon as the last one is answered."""
    import aiohttp

    res = LoadResult()
    feed = iter(calls)
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        stop = loop.time() + seconds

        async def worker() -> None:
            for call in feed:
                if loop.time() >= stop:
                    return
                res.sent += 1
                await _one(session, base, call, res)

        cpu0, scpu0, t0 = _own_cpu(), _cpu_seconds(pid), loop.time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        res.wall_s = loop.time() - t0
        res.client_cpu_s, res.server_cpu_s = _own_cpu() - cpu0, _cpu_seconds(pid) - scpu0
    return res


# ============================================================================================ parent: /metrics


async def scrape(child: Child) -> dict[str, float]:
    import aiohttp

    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as s, s.get(child.url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name.removeprefix("pandian_")] = float(value)
    return out


def _left(m: dict[str, float]) -> str:
    unprocessed, queued = _backlog(m)
    return (
        f" (not drained: {unprocessed:.0f} events, {queued:.0f} outbox rows left)"
        if unprocessed or queued
        else ""
    )


def _backlog(m: dict[str, float]) -> tuple[float, float]:
    """(events accepted and neither processed nor failed yet, outbox rows pending or being sent). A failed
    event waits for the server's replay (``replay_after_s`` later), which counts it as processed too."""
    done = m.get("dispatch_processed_total", 0) - m.get("dispatch_replayed_total", 0)
    unprocessed = max(0.0, m.get("dispatch_accepted_total", 0) - done - m.get("dispatch_errors_total", 0))
    queued = m.get('outbox_depth{state="pending"}', 0) + m.get('outbox_depth{state="sending"}', 0)
    return unprocessed, queued


async def drain(child: Child, within: float) -> tuple[float, dict[str, float]]:
    """Wait until every accepted event is processed and the outbox is empty; (seconds, last metrics)."""
    t0 = time.monotonic()
    while True:
        m = await scrape(child)
        if _backlog(m) == (0, 0) or time.monotonic() - t0 > within:
            return time.monotonic() - t0, m
        await asyncio.sleep(0.2)


# ============================================================================================ parent: phases


@dataclass
class Latency:
    platform: str
    res: LoadResult
    server_q: tuple[float, float]
    drain_s: float
    backlog: tuple[float, float]
    failed: float  # events whose processing raised (dispatch_errors_total): no reply until a replay


@dataclass
class Throughput:
    platform: str
    server: LoadResult
    bare: LoadResult
    drain_s: float
    backlog: tuple[float, float]
    failed: float  # events whose processing raised (dispatch_errors_total): no reply until a replay

    @property
    def acks_per_s(self) -> float:
        return self.server.ok / self.server.wall_s

    @property
    def end_to_end_per_s(self) -> float:
        return self.server.ok / (self.server.wall_s + self.drain_s)

    @property
    def bare_per_s(self) -> float:
        return self.bare.ok / self.bare.wall_s

    @property
    def ratio(self) -> float:
        return self.acks_per_s / self.bare_per_s if self.bare_per_s else float("nan")


@dataclass
class Memory:
    config: str
    ready_s: float
    rss_ready: float
    rss_warm: float
    rss_load: float
    hwm: float
    lark: bool | None
    load: LoadResult | None = None


def _platform_sections(platforms: tuple[str, ...], fake_ports: dict[str, int]) -> dict[str, Any]:
    from tests.fakes.wecom import WeComFakeState

    w = WeComFakeState()
    base = {p: f"http://127.0.0.1:{port}" for p, port in fake_ports.items()}
    sections: dict[str, Any] = {
        "wecom": {"corp_id": w.corp_id, "agent_id": w.agent_id, "secret": w.secret, "token": WECOM_TOKEN,
                  "encoding_aes_key": WECOM_AES_KEY, "api_base": base["wecom"]},
        "feishu": {**FEISHU, "domain": base["feishu"]},
        "dingtalk": {**DINGTALK, "card_template_id": "bench.schema", "api_base": base["dingtalk"],
                     "oapi_base": base["dingtalk"]},
    }  # fmt: skip
    return {p: sections[p] for p in platforms}


class Bench:
    def __init__(self, args: argparse.Namespace, children: Children, db: Database, fakes: Child) -> None:
        self.args, self.children, self.db, self.fakes = args, children, db, fakes
        self.callbacks = Callbacks()
        self.n_server = itertools.count(1)

    async def server(self, label: str, platforms: tuple[str, ...], profile: bool = False) -> Child:
        n = next(self.n_server)
        spec = {
            "database_url": await self.db.fresh(),
            "platforms": _platform_sections(platforms, self.fakes.info["ports"]),
            "server": {"photos_dir": str(self.children.workdir / "photos"), "outbox_interval_s": 1.0},
            "profile": str(Path(self.args.profile) / f"server-{n}-{label.replace(' ', '_')}.prof")
            if profile and self.args.profile else None,
        }  # fmt: skip
        return await self.children.start("server", label, spec)

    def progress(self, text: str) -> None:
        print(f"  {time.strftime('%H:%M:%S')} {text}", flush=True)

    async def warm_up(self, child: Child, platforms: tuple[str, ...], n: int = 200) -> None:
        calls = self.callbacks.cycle(platforms) if platforms else itertools.repeat(HEALTHZ)
        await open_loop(child.url, calls, 100.0, n / 100.0, child.pid)
        if child.kind == "server":
            await drain(child, self.args.drain_timeout)

    # -- 2. open-loop latency: a fresh server (all selected platforms on) and database per run --

    async def latency(self, platforms: tuple[str, ...]) -> list[Latency]:
        a = self.args
        out: list[Latency] = []
        for r in range(a.repeat):
            for p in platforms:
                child = await self.server(f"latency-{p}", platforms, profile=not out)
                await self.warm_up(child, (p,))
                res = await open_loop(child.url, self.callbacks.cycle((p,)), a.rate, a.seconds, child.pid)
                m = await scrape(child)
                server_q = (m.get('ack_ms{quantile="0.5"}', float("nan")),
                            m.get('ack_ms{quantile="0.99"}', float("nan")))  # fmt: skip
                drain_s, m = await drain(child, a.drain_timeout)
                await self.children.stop(child)  # on an error or Ctrl-C, amain's kill_all stops it
                out.append(Latency(p, res, server_q, drain_s, _backlog(m), m.get("dispatch_errors_total", 0)))
                self.progress(
                    f"[{r + 1}/{a.repeat}] {p:<8} {a.rate:.0f}/s: acked {res.ok / res.wall_s:5.0f}/s  "
                    f"p50 {_q(res.latencies_ms, 0.5):7.1f} ms  p99 {_q(res.latencies_ms, 0.99):7.1f} ms  "
                    f"HTTP errors {sum(res.errors.values())}  failed events {m.get('dispatch_errors_total', 0):.0f}  "
                    f"drain {drain_s:.1f} s{_left(m)}"
                )
        return out

    # -- 3. closed-loop throughput: a fresh server and database per run, one bare server throughout --

    async def throughput(self, platforms: tuple[str, ...]) -> list[Throughput]:
        a = self.args
        bare = await self.children.start("bare", "bare aiohttp", {})
        await self.warm_up(bare, platforms)
        out = []
        for r in range(a.repeat):
            for p in platforms:
                child = await self.server(f"throughput-{p}", platforms)
                await self.warm_up(child, (p,))
                # Built before the clock starts (the client should spend its CPU on sending), more than either
                # server can take; built again for each run (the platforms' timestamp windows).
                calls = [self.callbacks.make(p) for _ in range(int(a.throughput_seconds * a.max_rate))]
                first, second = (child, bare) if r % 2 == 0 else (bare, child)  # alternate who goes first
                got: dict[str, LoadResult] = {}
                drain_s, m = 0.0, dict[str, float]()
                for target in (first, second):
                    got[target.kind] = await closed_loop(
                        target.url, calls, a.concurrency, a.throughput_seconds, target.pid
                    )
                    if target is child:
                        drain_s, m = await drain(child, a.drain_timeout)
                        await self.children.stop(child)
                    else:
                        await asyncio.sleep(0.5)
                t = Throughput(
                    p, got["server"], got["bare"], drain_s, _backlog(m), m.get("dispatch_errors_total", 0)
                )
                out.append(t)
                self.progress(
                    f"[{r + 1}/{a.repeat}] {p:<8} pandian {t.acks_per_s:6.0f}/s  bare {t.bare_per_s:6.0f}/s  "
                    f"ratio {t.ratio:5.1%}  drain {drain_s:.1f} s{_left(m)}"
                )
        await self.children.stop(bare)
        return out

    # -- 4. memory --

    async def memory(self) -> list[Memory]:
        a = self.args
        out = []
        for label, platforms in MEMORY_CONFIGS:
            child = await self.server(label, platforms)
            rss_ready = _proc_status(child.pid).get("VmRSS", 0)
            await self.warm_up(child, platforms)
            rss_warm = _proc_status(child.pid).get("VmRSS", 0)
            calls = self.callbacks.cycle(platforms) if platforms else itertools.repeat(HEALTHZ)
            load = await open_loop(child.url, calls, a.rate, a.seconds, child.pid)
            await drain(child, a.drain_timeout)
            st = _proc_status(child.pid)
            await self.children.stop(child)
            lark = child.exit_info().get("lark_oapi")
            out.append(Memory(label, child.ready_s, rss_ready, rss_warm, st.get("VmRSS", 0), st.get("VmHWM", 0),
                              lark, load))  # fmt: skip
            self.progress(
                f"{label:<15} ready {child.ready_s:4.1f} s  RSS {rss_ready:5.1f} → {rss_warm:5.1f} → "
                f"{st.get('VmRSS', 0):5.1f} MB  peak {st.get('VmHWM', 0):5.1f} MB"
            )
        return out


# ============================================================================================ report


def _med(values: list[float]) -> float:
    vals = [v for v in values if v == v]
    return statistics.median(vals) if vals else float("nan")


def _fmt_errors(results: list[LoadResult]) -> str:
    merged: dict[str, int] = {}
    for r in results:
        for k, v in r.errors.items():
            merged[k] = merged.get(k, 0) + v
    return ", ".join(f"{k} ×{v}" for k, v in sorted(merged.items())) or "0"


def _table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = "  ".join(
        h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for r in rows:
        print(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )


def report(
    args: argparse.Namespace, db: Database, platforms: tuple[str, ...], lat: list[Latency],
    tp: list[Throughput], mem: list[Memory],
) -> bool:  # fmt: skip
    verdicts: list[tuple[str, bool, str]] = []
    print()
    print(f"pandian webhook bench · {db.kind} · commit {_commit()} · {os.cpu_count()} CPUs · "
          f"load average {os.getloadavg()[0]:.2f} · median of {args.repeat} run(s) per figure")  # fmt: skip

    if lat:
        print()
        print(f"Ack latency, open loop: {args.rate:.0f} callbacks/s for {args.seconds:.0f} s per platform "
              f"(client-measured, a timeout counting as its 60 s; server = its own /metrics quantiles, last ≤ 5,000 acks)")  # fmt: skip
        rows = []
        for p in platforms:
            lrs = [x for x in lat if x.platform == p]
            res = [x.res for x in lrs]
            p50 = _med([_q(r.latencies_ms, 0.5) for r in res])
            p99 = _med([_q(r.latencies_ms, 0.99) for r in res])
            rows.append([
                p, f"{sum(r.sent for r in res) // len(res)}", f"{_med([r.ok / r.wall_s for r in res]):.0f}",
                f"{p50:.1f}", f"{p99:.1f}", f"{_med([max(r.latencies_ms, default=0) for r in res]):.0f}",
                f"{_med([x.server_q[0] for x in lrs]):.1f} / {_med([x.server_q[1] for x in lrs]):.1f}",
                f"{_med([_q(r.lag_ms, 0.99) for r in res]):.1f}",
                f"{_med([r.server_cpu_s / r.wall_s for r in res]):.0%}",
                f"{_med([x.drain_s for x in lrs]):.1f}", f"{_med([x.failed for x in lrs]):.0f}", _fmt_errors(res),
            ])  # fmt: skip
            verdicts.append((f"ack p99 < {TARGET_P99_MS:.0f} ms at {args.rate:.0f}/s · {p}", p99 < TARGET_P99_MS,
                             f"{p99:.1f} ms"))  # fmt: skip
        _table(["platform", "sent", "acked/s", "p50 ms", "p99 ms", "max ms", "server p50/p99 ms", "send lag p99",
                "server CPU", "drain s", "failed events", "HTTP errors (all runs)"], rows)  # fmt: skip
        bad = [x for x in lat if x.backlog != (0, 0)]
        if bad:
            left = ", ".join(f"{x.platform} {x.backlog[0]:.0f}/{x.backlog[1]:.0f}" for x in bad)
            print(f"  ! {len(bad)} run(s) not drained within {args.drain_timeout:.0f} s; left (unprocessed events / "
                  f"unsent outbox rows): {left}")  # fmt: skip
        print(
            "  failed events: processing raised (pool or per-user lock timeouts): no reply until the server's"
        )
        print("  replay picks the event up again (replay_after_s later)")

    if tp:
        print()
        print(f"Throughput, closed loop: {args.concurrency} concurrent clients for {args.throughput_seconds:.0f} s, "
              f"pandian and bare aiohttp alternately, same payloads")  # fmt: skip
        rows = []
        for p in platforms:
            trs = [x for x in tp if x.platform == p]
            if not trs:
                continue
            ratio = _med([x.ratio for x in trs])
            s_cpu = _med([x.server.server_cpu_s / max(x.server.ok, 1) * 1000 for x in trs])
            b_cpu = _med([x.bare.server_cpu_s / max(x.bare.ok, 1) * 1000 for x in trs])
            rows.append([
                p, f"{_med([x.acks_per_s for x in trs]):.0f}", f"{_med([x.end_to_end_per_s for x in trs]):.0f}",
                f"{_med([x.bare_per_s for x in trs]):.0f}", f"{ratio:.0%}",
                f"{_med([_q(x.server.latencies_ms, 0.99) for x in trs]):.0f}",
                f"{s_cpu:.2f}", f"{b_cpu:.2f}", f"{b_cpu / s_cpu:.0%}",
                f"{_med([x.bare.client_cpu_s / x.bare.wall_s for x in trs]):.0%}",
                f"{_med([x.drain_s for x in trs]):.1f}", f"{_med([x.failed for x in trs]):.0f}",
                _fmt_errors([x.server for x in trs]),
            ])  # fmt: skip
            verdicts.append((f"throughput ≥ {TARGET_RATIO:.0%} of bare aiohttp · {p}", ratio >= TARGET_RATIO,
                             f"{ratio:.0%}"))  # fmt: skip
        _table(["platform", "acks/s", "end-to-end/s", "bare/s", "ratio", "p99 ms", "CPU ms/cb", "bare CPU ms",
                "CPU ratio", "client CPU (bare)", "drain s", "failed events", "HTTP errors (all runs)"], rows)  # fmt: skip
        print(
            "  end-to-end = callbacks / (run + drain): every event processed and its reply sent by the outbox;"
        )
        print(
            "  CPU ratio = bare CPU per request / pandian CPU per callback (the ratio if the server had a core"
        )
        print("  to itself); client CPU near 100 % means the load generator, not bare aiohttp, set the pace.")

    if mem:
        print()
        print(f"Server memory (MB, VmRSS): when healthy, after 200 warm-up callbacks, after {args.seconds:.0f} s of "
              f"mixed load at {args.rate:.0f}/s and the drain; peak = VmHWM")  # fmt: skip
        rows = [
            [m.config, f"{m.ready_s:.1f}", f"{m.rss_ready:.1f}", f"{m.rss_warm:.1f}", f"{m.rss_load:.1f}",
             f"{m.hwm:.1f}", {True: "yes", False: "no", None: "?"}[m.lark],
             _fmt_errors([m.load]) if m.load else "0"]
            for m in mem
        ]  # fmt: skip
        _table(["platforms", "start s", "healthy", "warm", "after load", "peak", "lark_oapi", "errors"], rows)
        for m in mem:
            if m.config == "wecom+dingtalk":
                verdicts.append((f"memory < {TARGET_MB_WECOM_DINGTALK:.0f} MB · WeCom + DingTalk",
                                 m.hwm < TARGET_MB_WECOM_DINGTALK, f"peak {m.hwm:.0f} MB"))  # fmt: skip
            if m.config == "all three":
                verdicts.append((f"memory < {TARGET_MB_FEISHU:.0f} MB · with Feishu", m.hwm < TARGET_MB_FEISHU,
                                 f"peak {m.hwm:.0f} MB"))  # fmt: skip
            if m.lark:
                verdicts.append((f"lark_oapi kept out · {m.config}", False, "imported"))

    print()
    print("Targets")
    for name, ok, value in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {value}")
    return all(ok for _, ok, _ in verdicts)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bot", "core", "integrations"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        if out.returncode:
            return "? (not a git checkout)"
        return out.stdout.strip() + (" (+ local changes)" if dirty else "")
    except OSError:
        return "?"


def _print_profile(path: Path, n: int = 30) -> None:
    import pstats

    for prof in sorted(path.glob("server-*-latency-*.prof")):
        print()
        # By own time: a coroutine's cumulative time counts the time it spent suspended, so it misleads.
        print(f"Profile of the first latency server ({prof}), top {n} by own time:")
        pstats.Stats(str(prof)).sort_stats("tottime").print_stats(n)


# ============================================================================================ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--seconds", type=float, default=20.0, help="open-loop run length per platform (default 20)"
    )
    p.add_argument("--rate", type=float, default=200.0, help="open-loop callbacks per second (default 200)")
    p.add_argument("--platform", default=",".join(PLATFORMS), help="comma-separated; default all three")
    p.add_argument("--database-url", default=None,
                   help=f"default: a temporary SQLite file; PostgreSQL e.g. {DEFAULT_PG}\n"
                        "(a scratch database is created beside it and dropped afterwards)")  # fmt: skip
    p.add_argument(
        "--quick", action="store_true", help="short runs, once: a smoke test, not figures to quote"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="exit 0 when every event was answered, whatever the figures (CI's smoke run; implies --quick)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per figure, median quoted (default 3)")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (default 16)")
    p.add_argument(
        "--throughput-seconds", type=float, default=10.0, help="closed-loop run length (default 10)"
    )
    p.add_argument(
        "--max-rate",
        type=float,
        default=5000.0,
        help="callbacks built per closed-loop second; above what either server can do (default 5000)",
    )
    p.add_argument("--phases", default="latency,throughput,memory", help="any of latency,throughput,memory")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="longest wait for the backlog after a run (default 60)",
    )
    p.add_argument("--profile", default=None, help="directory: cProfile the latency server, print the top")
    p.add_argument("--keep", action="store_true", help="keep the working directory (database, server logs)")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    args.quick = args.quick or args.smoke
    if args.quick:
        args.seconds, args.repeat, args.throughput_seconds = (
            min(args.seconds, 5.0),
            1,
            min(args.throughput_seconds, 3.0),
        )
    return args


async def amain(args: argparse.Namespace) -> int:
    platforms = tuple(p.strip() for p in args.platform.split(",") if p.strip())
    phases = {p.strip() for p in args.phases.split(",")}
    if bad := [p for p in platforms if p not in PLATFORMS] + sorted(
        phases - {"latency", "throughput", "memory"}
    ):
        print(f"unknown platform or phase: {bad}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="pandian-webhook-bench-"))
    children = Children(workdir)
    db: Database | None = None
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    stopping: list[int] = []

    def interrupt(sig: int) -> None:  # the first Ctrl-C or SIGTERM stops the run; cleanup is bounded
        if not stopping:
            stopping.append(sig)
            main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):  # explicit: a SIGINT ignored by the parent shell counts too
        loop.add_signal_handler(sig, interrupt, sig)
    ok = False
    try:
        db = Database(args.database_url, workdir)
        print(f"working directory {workdir} · database {db.kind}", flush=True)
        await db.create_template()
        fakes = await children.start("fakes", "fake platform APIs", {})
        bench = Bench(args, children, db, fakes)
        lat: list[Latency] = []
        tp: list[Throughput] = []
        mem: list[Memory] = []
        if "latency" in phases:
            print("ack latency (open loop)", flush=True)
            lat = await bench.latency(platforms)
        if "throughput" in phases:
            print("throughput (closed loop)", flush=True)
            tp = await bench.throughput(platforms)
        if "memory" in phases:
            print("memory", flush=True)
            mem = await bench.memory()
        ok = report(args, db, platforms, lat, tp, mem)
        if args.smoke:  # CI: the bench must run and every event be answered; the figures are not judged
            broken = [x.platform for x in lat if x.failed or x.res.errors]
            broken += [x.platform for x in tp if x.failed or x.server.errors]
            broken += [m.config for m in mem if m.lark or (m.load is not None and m.load.errors)]
            print(
                f"smoke run: {'failures in ' + ', '.join(broken) if broken else 'no failed events'}",
                flush=True,
            )
            ok = not broken
        if args.profile:
            _print_profile(Path(args.profile))
    except asyncio.CancelledError:
        print("\ninterrupted: stopping the servers", file=sys.stderr)
        return 130
    finally:
        children.kill_all()
        if db is not None and not args.keep:
            await db.drop_all()
        if args.keep or not ok:
            print(f"kept {workdir} (server logs{', databases' if args.keep else ''})", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        kind, parent, spec = args.child
        _child_main(kind, int(parent), spec)
        return 0
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:  # asyncio.run cancelled amain, whose finally stopped the children
        return 130


if __name__ == "__main__":
    sys.exit(main())
