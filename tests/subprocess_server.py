"""The real server as a separate process (``python -m saltline.server serve``), so a test can SIGKILL it
(no shutdown, no flush: whatever was not committed is gone) and start it again on the same
database and port.

Settings travel as ``SALTLINE_*`` environment variables (``server/settings.py``); the database is
migrated in-process before the first start. Readiness is ``GET /healthz`` answering 200; the
process's output goes to ``<log_dir>/server-<n>.log`` (one file per start).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from saltline.server.storage.migrate import upgrade
from tests.pg import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


class SubprocessServer:
    def __init__(
        self,
        database_url: str,
        data_dir: Path,
        settings: Mapping[str, object],
        *,
        port: int | None = None,
        migrate: bool = True,
    ) -> None:
        self.database_url = database_url
        self.data_dir = Path(data_dir)
        self.settings = dict(settings)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        if migrate:
            # upgrade() runs its own event loop: keep it off the caller's (maybe running) one
            with ThreadPoolExecutor(1) as pool:
                pool.submit(upgrade, database_url).result()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SALTLINE_")}
        for name, value in self.settings.items():
            env[f"SALTLINE_{name.upper()}"] = str(value)
        # the repository first: the child imports the same server code as the tests
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def log_path(self, n: int | None = None) -> Path:
        return self.data_dir / f"server-{self.starts if n is None else n}.log"

    def start(self, timeout: float = 30.0) -> SubprocessServer:
        if self.running:
            raise RuntimeError("the server process is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = self.log_path().open("wb")
        cmd = [
            sys.executable,
            "-m",
            "saltline.server",
            "serve",
            "--database-url",
            self.database_url,
            "--data-dir",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        try:
            self.proc = subprocess.Popen(  # our own interpreter and module
                cmd, env=self._env(), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        self._wait_ready(timeout)
        return self

    async def astart(self, wait_s: float = 30.0) -> SubprocessServer:
        """:meth:`start` in a thread, so the clients in the caller's event loop keep running."""
        return await asyncio.to_thread(self.start, wait_s)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as http:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode} while starting:\n"
                        + self.log_path().read_text(errors="replace")[-4000:]
                    )
                try:
                    if http.get(f"{self.base_url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise TimeoutError(f"server did not become ready in {timeout} s")
                time.sleep(0.05)  # readiness poll of a starting process

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, open sockets are reset by the kernel."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful), then SIGKILL after ``timeout``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, timeout: float = 30.0) -> SubprocessServer:
        self.stop()
        return self.start(timeout)

    def log_text(self) -> str:
        return "".join(
            self.log_path(n).read_text(errors="replace")
            for n in range(1, self.starts + 1)
            if self.log_path(n).exists()
        )
