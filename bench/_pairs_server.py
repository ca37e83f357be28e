"""bench/pairs.py's server under test: start it (``python -m saltline.server db upgrade``, then
``serve`` on 127.0.0.1 and a free port, SQLite in a fresh temporary data directory unless
``--database-url``; ``--instances 2``; ``--workers N`` with a Redis) or target a running one
(``--url``), and scrape the few ``/metrics`` counters the reports use."""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import _common as common

log = common.log

#: Settings for a server this script starts: cheap argon2 and high rate limits (the set-up
#: registers up to thousands of accounts from one IP), access log off. Everything on the hot path
#: (JWT, group commit, SQLite synchronous=FULL) stays at the server's defaults.
SERVER_ENV = {
    "SALTLINE_ARGON2_TIME_COST": "1",
    "SALTLINE_ARGON2_MEMORY_COST_KIB": "8",
    "SALTLINE_ARGON2_PARALLELISM": "1",
    "SALTLINE_RATE_LIMIT_REGISTER_PER_IP": "1000000/minute",
    "SALTLINE_RATE_LIMIT_LOGIN_PER_IP": "1000000/minute",
    "SALTLINE_RATE_LIMIT_LOGIN_PER_ACCOUNT": "1000000/minute",
    "SALTLINE_RATE_LIMIT_PROVISIONING_PER_IP": "1000000/minute",
    "SALTLINE_RATE_LIMIT_ENVELOPES_PER_DEVICE": "100000000/minute",
    "SALTLINE_RATE_LIMIT_ENVELOPE_BYTES_PER_DEVICE": "1000000000000/minute",
    "SALTLINE_LOG_LEVEL": "warning",
}


@dataclass
class Target:
    """The server under test. With ``--instances 2``: senders and set-up use the first
    instance (``base_url``/``ws_url``), receivers hold their sockets on the second
    (``recv_ws_url``), so every delivery crosses instances through the Redis bus; CPU and RSS
    are summed over ``pids``."""

    base_url: str
    ws_url: str
    pid: int | None
    database: str
    process: Any = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    others: list[Any] = field(default_factory=list)  # further instances' ServerProcess
    recv_ws_url: str = ""
    #: A redis-server the bench started for ``--workers N`` (its CPU counts as the server's).
    redis: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.recv_ws_url = self.recv_ws_url or self.ws_url

    @property
    def pids(self) -> list[int]:
        """Each instance (its workers are found as its descendants) and the bench's Redis."""
        redis = [self.redis.pid] if self.redis is not None else []
        return [p for p in [self.pid, *(o.pid for o in self.others), *redis] if p]

    @property
    def base_urls(self) -> list[str]:
        return [self.base_url, *(o.base_url for o in self.others)]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "url": self.base_url,
            "pid": self.pid,
            "instances": 1 + len(self.others),
            "workers": int(self.env.get("SALTLINE_WORKERS", "1")),
            "started_by_bench": self.process is not None,
        }
        if self.others:
            out["receiver_instance_url"] = self.others[0].base_url
            out["pids"] = self.pids
        if self.process is not None:
            out["settings_env"] = {k: v for k, v in self.env.items() if "SECRET" not in k}
        return out

    def finish(self) -> dict[str, Any]:
        if self.process is None:
            return {}
        out: dict[str, Any] = {}
        for i, proc in enumerate([self.process, *self.others]):
            alive = proc.alive()
            code = proc.stop()
            key = "" if i == 0 else f"instance_{i + 1}_"
            out.update(
                {f"{key}alive_at_end": alive, f"{key}exit_code": code, f"{key}log": proc.log_problems()}
            )
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(10)
        if self.tmp is not None:
            self.tmp.cleanup()
        return out


def database_kind(url: str | None) -> str:
    if not url or url.startswith("sqlite"):
        return "sqlite"
    if url.startswith("postgresql"):
        return "postgresql"
    return url.split(":", 1)[0]


def start_saltline(args: argparse.Namespace, name: str, extra_env: dict[str, str]) -> Target:
    if args.url:
        base = args.url.rstrip("/")
        return Target(base, "ws" + base[4:], args.server_pid, database_kind(args.database_url))
    tmp = tempfile.TemporaryDirectory(prefix=f"saltline-bench-{name}-")
    port = common.free_port()
    env = {
        **SERVER_ENV,
        "SALTLINE_DATA_DIR": tmp.name,
        "SALTLINE_HOST": "127.0.0.1",
        "SALTLINE_PORT": str(port),
        "SALTLINE_JWT_SECRET": secrets.token_urlsafe(48),
        "SALTLINE_SQLITE_SYNCHRONOUS": args.sqlite_synchronous,
        **extra_env,
    }
    if args.database_url:
        env["SALTLINE_DATABASE_URL"] = args.database_url
    if args.instances > 1:
        if database_kind(args.database_url) != "postgresql" or not args.redis_url:
            raise SystemExit("--instances 2 needs --database-url postgresql+asyncpg://... and --redis-url")
        env["SALTLINE_REDIS_URL"] = args.redis_url
    redis = None
    if args.workers > 1:
        # serve --workers N shares wake-ups and rate limits through Redis (docs/deploy.md § 8)
        redis_url = args.redis_url
        if not redis_url:
            redis, redis_url = common.start_redis(Path(tmp.name) / "redis.log")
            log(f"{name}: redis-server pid {redis.pid} on {redis_url}")
        env["SALTLINE_REDIS_URL"] = redis_url
        env["SALTLINE_WORKERS"] = str(args.workers)

    upgrade = subprocess.run(
        [sys.executable, "-m", "saltline.server", "db", "upgrade"],
        cwd=common.REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if upgrade.returncode != 0:
        raise RuntimeError(f"db upgrade failed:\n{upgrade.stdout}\n{upgrade.stderr}")
    proc = common.ServerProcess(
        [sys.executable, "-m", "saltline.server", "serve"], port, Path(tmp.name) / "server.log", env
    ).start()
    log(f"{name}: saltline server pid {proc.pid} on {proc.base_url} ({database_kind(args.database_url)})")
    others = []
    for i in range(1, args.instances):
        other_port = common.free_port()
        other = common.ServerProcess(
            [sys.executable, "-m", "saltline.server", "serve"],
            other_port,
            Path(tmp.name) / f"server-{i + 1}.log",
            {**env, "SALTLINE_PORT": str(other_port)},
        ).start()
        log(f"{name}: instance {i + 1}, pid {other.pid} on {other.base_url} (receivers connect here)")
        others.append(other)
    return Target(
        proc.base_url,
        proc.ws_url,
        proc.pid,
        database_kind(args.database_url),
        proc,
        tmp,
        env,
        others=others,
        recv_ws_url=others[0].ws_url if others else "",
        redis=redis,
    )


# -- server metrics -----------------------------------------------------------------------------

SCRAPED = (
    "saltline_group_commit_batch_size_sum",
    "saltline_group_commit_batch_size_count",
    "saltline_envelopes_accepted_total",
    "saltline_envelopes_delivered_total",
    "saltline_delivery_latency_seconds_sum",
    "saltline_delivery_latency_seconds_count",
)


async def scrape(base_url: str) -> dict[str, float]:
    """The few Saltline counters the report uses, from ``/metrics`` (empty if unavailable)."""
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
            text = (await http.get("/metrics")).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in SCRAPED:
            out[name] = float(value)
    return out


async def scrape_all(target: Target) -> dict[str, float]:
    """The scraped counters summed over the instances."""
    total: dict[str, float] = {}
    for url in target.base_urls:
        for key, value in (await scrape(url)).items():
            total[key] = total.get(key, 0.0) + value
    return total


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    batches = d.get("saltline_group_commit_batch_size_count", 0.0)
    acked = d.get("saltline_delivery_latency_seconds_count", 0.0)
    return {
        "group_commit_transactions": int(batches),
        "group_commit_mean_jobs": round(d["saltline_group_commit_batch_size_sum"] / batches, 2)
        if batches
        else None,
        "envelopes_accepted": int(d.get("saltline_envelopes_accepted_total", 0)),
        "envelopes_acknowledged": int(d.get("saltline_envelopes_delivered_total", 0)),
        "server_accept_to_ack_mean_ms": round(d["saltline_delivery_latency_seconds_sum"] / acked * 1000, 2)
        if acked
        else None,
    }
