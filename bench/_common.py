"""Shared helpers for the benchmarks in ``bench/``: process CPU and RSS from /proc, quiesce,
percentiles, version strings, free ports and a server subprocess with its log captured.

Linux only (/proc). Nothing here imports the server.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent


# -- /proc --------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def self_cpu_s() -> float:
    """CPU seconds (user + system) of this process (the load generator), from getrusage."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


Pids = int | Sequence[int] | None


def pid_list(pid: Pids) -> list[int]:
    """One server pid, several (instances), or none; each with its descendants (the worker
    processes of ``serve --workers N``), as they are now."""
    if pid is None:
        return []
    roots = [pid] if isinstance(pid, int) else list(pid)
    # idempotent (a list it returned may be passed again): each pid once
    return list(dict.fromkeys(p for root in roots for p in [root, *descendants(root)]))


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def start_redis(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway ``redis-server`` on a free port (no persistence): the process and its URL."""
    port = free_port()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def procs_cpu_s(pid: Pids) -> float:
    """utime + stime summed over the server process(es)."""
    return sum(proc_cpu_s(p) for p in pid_list(pid))


class CpuMeter:
    """CPU of the server (``pid``: one, several instances summed, or None) and of this process
    over an interval."""

    def __init__(self, pid: Pids) -> None:
        self.pid = pid_list(pid)
        self.t0 = time.perf_counter()
        self.server0 = procs_cpu_s(self.pid) if self.pid else None
        self.self0 = self_cpu_s()

    def result(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        out: dict[str, Any] = {"wall_s": round(wall, 3)}
        if self.pid and self.server0 is not None:
            server = procs_cpu_s(self.pid) - self.server0
            out["server_cpu_s"] = round(server, 3)
            out["server_cores"] = round(server / wall, 3)
        else:
            out["server_cpu_s"] = out["server_cores"] = None
        mine = self_cpu_s() - self.self0
        out["loadgen_cpu_s"] = round(mine, 3)
        out["loadgen_cores"] = round(mine / wall, 3)
        return out


async def quiesce(pid: Pids, *, threshold: float = 0.05, max_s: float = 30.0) -> dict[str, Any]:
    """Wait until the server process(es) use less than ``threshold`` of a core over 1 s (at most
    ``max_s``)."""
    import asyncio

    if not pid_list(pid):
        return {"reached": None, "waited_s": 0.0, "last_cores": None}
    start = time.perf_counter()
    last = None
    while True:
        c0, t0 = procs_cpu_s(pid), time.perf_counter()
        await asyncio.sleep(1.0)
        last = (procs_cpu_s(pid) - c0) / (time.perf_counter() - t0)
        waited = time.perf_counter() - start
        if last < threshold:
            return {"reached": True, "waited_s": round(waited, 2), "last_cores": round(last, 4)}
        if waited >= max_s:
            return {"reached": False, "waited_s": round(waited, 2), "last_cores": round(last, 4)}


# -- statistics ---------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil(q/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    values = sorted(latencies_s)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {
        "p50": ms(percentile(values, 50)),
        "p95": ms(percentile(values, 95)),
        "p99": ms(percentile(values, 99)),
        "max": ms(values[-1] if values else None),
        "mean": ms(sum(values) / len(values) if values else None),
        "n": len(values),
    }


# -- environment --------------------------------------------------------------------------------


def lag_summary_ms(lags: Sequence[float]) -> dict[str, float | None]:
    """How late the load generator fired its scheduled sends: p99 and max, in ms."""
    ordered = sorted(lags)
    return {
        "p99": round((percentile(ordered, 99) or 0) * 1000, 3),
        "max": round(ordered[-1] * 1000, 3) if ordered else None,
    }


def versions() -> dict[str, str | None]:
    def v(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "saltline": v("saltline"),
        "sqlalchemy": v("sqlalchemy"),
        "uvicorn": v("uvicorn"),
        "fastapi": v("fastapi"),
        "starlette": v("starlette"),
        "websockets": v("websockets"),
        "httpx": v("httpx"),
        "uvloop": v("uvloop"),
        "httptools": v("httptools"),
        "orjson": v("orjson"),
        "aiosqlite": v("aiosqlite"),
        "asyncpg": v("asyncpg"),
    }


def machine() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "platform": platform.platform(),
    }


def raise_nofile(wanted: int) -> dict[str, int]:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (bounded by the hard limit). Children
    started afterwards (the servers) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = soft
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return {"soft_before": soft, "soft": target, "hard": hard}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries only the JSON document."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- subprocesses -------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A server subprocess on 127.0.0.1:``port``; stdout+stderr go to ``log_path``."""

    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, ready_path: str = "/healthz", timeout_s: float = 60.0) -> ServerProcess:
        env = {**os.environ, **self.env}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + ready_path, timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.argv} not ready after {timeout_s} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_problems(self, max_excerpts: int = 3, context: int = 25) -> dict[str, Any]:
        """Count ERROR/CRITICAL lines and tracebacks in the log; a few excerpts."""
        text = self.log_text().splitlines()
        hits = [
            i
            for i, line in enumerate(text)
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
        ]
        excerpts = []
        for i in hits[:max_excerpts]:
            excerpts.append("\n".join(text[i : i + context]))
        return {"error_lines": len(hits), "excerpts": excerpts}


#: Settings for a benchmark's own server: cheap argon2 and high rate limits for the untimed
#: set-up; the send and delivery path keeps its defaults.
SDK_SERVER_ENV = {
    "SALTLINE_ARGON2_TIME_COST": "1",
    "SALTLINE_ARGON2_MEMORY_COST_KIB": "8",
    "SALTLINE_ARGON2_PARALLELISM": "1",
    "SALTLINE_RATE_LIMIT_REGISTER_PER_IP": "1000/minute",
    "SALTLINE_RATE_LIMIT_LOGIN_PER_IP": "1000/minute",
    "SALTLINE_RATE_LIMIT_LOGIN_PER_ACCOUNT": "1000/minute",
    "SALTLINE_RATE_LIMIT_PROVISIONING_PER_IP": "1000/minute",
    "SALTLINE_RATE_LIMIT_ENVELOPES_PER_DEVICE": "100000000/minute",
    "SALTLINE_RATE_LIMIT_ENVELOPE_BYTES_PER_DEVICE": "1000000000000/minute",
    "SALTLINE_LOG_LEVEL": "warning",
}


def start_sdk_server(tmp: Path) -> Any:
    """Migrate and start `python -m saltline.server serve` on SQLite in ``tmp``; returns the process."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SALTLINE_")},
        **SDK_SERVER_ENV,
        "SALTLINE_DATA_DIR": str(tmp / "server"),
        "SALTLINE_HOST": "127.0.0.1",
        "SALTLINE_PORT": str(port),
        "SALTLINE_JWT_SECRET": secrets.token_urlsafe(48),
    }
    subprocess.run(
        [sys.executable, "-m", "saltline.server", "db", "upgrade"], env=env, capture_output=True, check=True
    )
    argv = [sys.executable, "-m", "saltline.server", "serve"]
    server = ServerProcess(argv, port, tmp / "server.log", env=env)
    return server.start(ready_path="/readyz")


async def link_devices(approver: Any, new: Any, wait_s: float) -> None:
    """Link SDK client ``new`` to ``approver``'s account, confirming the code the new device
    showed (both sides of the handshake run at once)."""
    import asyncio

    code = await new.begin_link("bench device")
    shown: list[str] = []
    await asyncio.gather(
        approver.approve_link(
            code, history="all", confirm=lambda request: shown == [request.code], wait_s=wait_s
        ),
        new.complete_link(wait_s=wait_s, on_code=lambda c: shown.append(c.code)),
    )
