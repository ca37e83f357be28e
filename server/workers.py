"""``saltline serve --workers N``: several server processes on one listening socket.

One process serves one core: a reconnect storm (every device opening its socket after a restart)
is CPU-bound in the process that accepts (bench/README.md "Reconnect"). With ``workers`` > 1 the
command hands the app to uvicorn's process supervisor (``uvicorn.supervisors.Multiprocess``): it
binds the socket once, starts ``N`` worker processes that accept on it, answers their health
checks, restarts a worker that dies and stops them all on SIGINT/SIGTERM.

What a worker needs is rebuilt in the worker, from the environment: the supervisor starts it with
``spawn`` and passes only import strings, so :func:`configure_parent` turns the command's flags into
``SALTLINE_*`` variables first (the flags win over the variables, as for one process). What the
processes must share goes through the database and Redis, which the settings require
(:class:`~saltline.server.settings.Settings` refuses ``workers`` > 1 without ``redis_url``):

- the queue and every other record (the database, as with several instances);
- wake-ups, the "one socket per device" rule across processes and device removals (RedisBus);
- rate limits and quotas (the ``limits`` windows in Redis, not per process);
- the JWT secret (created once by the parent before the workers start);
- ``/metrics``: prometheus-client's multiprocess mode. Each worker writes its samples to memory
  mapped files in a fresh directory (``PROMETHEUS_MULTIPROC_DIR``, set by the parent before any
  worker imports prometheus-client); whichever worker answers a scrape sums them all
  (:func:`metrics_registry`). Gauges declare how they combine (``multiprocess_mode``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saltline.server.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry

#: prometheus-client reads this variable when it is first imported, in each worker.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The directory :func:`metrics_directory` made, passed on to the workers with it.
OWN_METRICS_ENV = "SALTLINE_WORKERS_METRICS_DIR"
#: The attribute names uvicorn resolves in this module (``module:attribute`` import strings).
APP_FACTORY = f"{__name__}:create_app_from_env"
HTTP_PROTOCOL = f"{__name__}:HttpProtocol"
WS_PROTOCOL = f"{__name__}:WsProtocol"

_protocols: dict[str, Any] = {}
_LIVE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


def multiprocess_metrics() -> bool:
    """True in a worker of ``serve --workers N`` (samples live in shared files): the directory
    is the one :func:`metrics_directory` made, not a ``PROMETHEUS_MULTIPROC_DIR`` inherited
    from elsewhere (a single process must not add up files it did not write)."""
    directory = os.environ.get(MULTIPROC_ENV)
    return bool(directory) and os.environ.get(OWN_METRICS_ENV) == directory


def configure_parent(settings: Settings, overrides: Mapping[str, object]) -> None:
    """Before the workers start: the command's flags become ``SALTLINE_*`` variables (a worker
    reads its settings from the environment) and the JWT secret file exists (two workers creating
    it at once could each write their own). ``serve`` has checked the schema already."""
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"SALTLINE_{name.upper()}"] = str(value)
    settings.resolved_jwt_secret()


@contextmanager
def metrics_directory() -> Iterator[Path]:
    """A fresh, private directory for the workers' samples (removed when the server stops): a
    directory left from an earlier run would add that run's counters to this one's."""
    path = Path(tempfile.mkdtemp(prefix="saltline-metrics-"))
    os.environ[MULTIPROC_ENV] = os.environ[OWN_METRICS_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        os.environ.pop(OWN_METRICS_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def create_app_from_env() -> FastAPI:
    """The worker's app (uvicorn's ``factory``): settings from the environment, logging as the
    single-process ``serve`` sets it up."""
    from saltline.server.api.log_filters import quiet_data_loggers
    from saltline.server.app import create_app

    forget_previous_process()
    stop_with_the_supervisor()
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_data_loggers()
    return create_app(settings)


#: How often a worker checks that its supervisor is still there.
SUPERVISOR_CHECK_S = 1.0


def stop_with_the_supervisor(interval_s: float = SUPERVISOR_CHECK_S) -> None:
    """A worker whose supervisor is gone (killed with SIGKILL, say) stops itself with SIGTERM
    (uvicorn's graceful shutdown: the writer's last batch commits), instead of serving on as an
    orphan that keeps the port from the next ``serve`` and that no one restarts. A thread, since
    the event loop may be the thing that is busy."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        logging.getLogger(__name__).warning("the supervisor (pid %d) is gone; stopping this worker", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def __getattr__(name: str) -> Any:
    """``HttpProtocol`` and ``WsProtocol``: the transport's protocol classes with this worker's
    limits (built on first use from the environment's settings)."""
    if name not in ("HttpProtocol", "WsProtocol"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _protocols:
        from saltline.server.cli import transport_limits
        from saltline.server.transport import protocol_classes

        http, ws = protocol_classes(transport_limits(Settings()))
        _protocols.update(HttpProtocol=http, WsProtocol=ws)
    return _protocols[name]


def forget_dead_workers(directory: Path) -> None:
    """Drop the live-gauge files of workers that are gone (a crashed worker's open sockets must
    not stay counted). prometheus-client leaves this to the supervisor, which uvicorn's is not."""
    from prometheus_client import multiprocess

    for entry in directory.iterdir():
        match = _LIVE_FILE.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(directory))
        except PermissionError:
            continue  # alive, another user's process (a reused pid)


def forget_previous_process() -> None:
    """Before this worker creates its metrics: drop the live-gauge files a dead process with the
    same pid left (a reused pid; no scrape ran in between). prometheus-client would otherwise
    start this worker's gauges from the dead one's values (its open sockets, counted for good)."""
    from prometheus_client import multiprocess

    if multiprocess_metrics():
        multiprocess.mark_process_dead(os.getpid(), os.environ[MULTIPROC_ENV])


def metrics_registry() -> CollectorRegistry:
    """A registry that sums every worker's samples (``/metrics`` in multiprocess mode)."""
    from prometheus_client import CollectorRegistry, multiprocess

    directory = Path(os.environ[MULTIPROC_ENV])
    forget_dead_workers(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return registry
