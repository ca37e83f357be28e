"""Attachments benchmark (run by hand; prints one JSON document on stdout, progress on stderr).

Upload and download of one file through a real local server (``python -m saltline.server serve``,
SQLite, a fresh data directory) with real SDK clients: bob ``send_file`` (create the upload,
encrypt to a spool in a worker thread while one resumable ``PATCH`` streams it, pad, message),
alice ``download`` (stream, decrypt as it arrives, verify, rename). Beside
it, in the same run and on the same disk: raw secretstream encryption throughput and a plain file
copy. RSS of the client (this process) and of the server are sampled every 20 ms during the
transfers; peaks are reported above their level just before.

    .venv/bin/python bench/attachments.py                      # 50 MB, filesystem store
    .venv/bin/python bench/attachments.py --size-mb 5
    .venv/bin/python bench/attachments.py --store database
"""

# A benchmark script: blocking stat/mkdir calls between timed phases are fine.
# ruff: noqa: ASYNC240

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import SDK_SERVER_ENV, ServerProcess, free_port, log, machine, proc_rss_kib, versions
from saltline.client_sdk.client import Client
from saltline.client_sdk.core.events import MessageReceived
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.crypto.attachments import AttachmentDecryptor, AttachmentEncryptor

MB = 1_000_000
PIECE = 1024 * 1024


def start_server(tmp: Path, store: str) -> ServerProcess:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SALTLINE_")},
        **SDK_SERVER_ENV,
        "SALTLINE_DATA_DIR": str(tmp / "server"),
        "SALTLINE_HOST": "127.0.0.1",
        "SALTLINE_PORT": str(port),
        "SALTLINE_JWT_SECRET": secrets.token_urlsafe(48),
        "SALTLINE_ATTACHMENT_STORE": store,
    }
    subprocess.run(
        [sys.executable, "-m", "saltline.server", "db", "upgrade"], env=env, capture_output=True, check=True
    )
    argv = [sys.executable, "-m", "saltline.server", "serve"]
    server = ServerProcess(argv, port, tmp / "server.log", env=env)
    return server.start(ready_path="/readyz")


class Sampler:
    """Peak RSS (KiB) of this process and the server while running."""

    def __init__(self, server_pid: int) -> None:
        self.pids = {"client": os.getpid(), "server": server_pid}
        self.base = {k: proc_rss_kib(p) for k, p in self.pids.items()}
        self.peak = dict(self.base)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for k, p in self.pids.items():
                self.peak[k] = max(self.peak[k], proc_rss_kib(p))
            await asyncio.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def result(self) -> dict[str, Any]:
        return {
            f"{k}_rss_mib": {
                "before": round(self.base[k] / 1024, 1),
                "peak": round(self.peak[k] / 1024, 1),
                "peak_above_before": round((self.peak[k] - self.base[k]) / 1024, 1),
            }
            for k in self.pids
        }


def raw_secretstream_mb_s(path: Path, tmp: Path) -> tuple[float, float]:
    """Raw secretstream throughput on this file: encryption (with the SHA-256 the encryptor
    keeps, as ``send_file`` does) and decryption (with the digest check), each in MB/s, reading
    and writing 1 MiB pieces in this process (the ciphertext goes through a file on the same disk,
    not timed)."""
    encryptor = AttachmentEncryptor()
    cipher_path = tmp / "raw.enc"
    size, elapsed = 0, 0.0
    with open(path, "rb") as f, open(cipher_path, "wb") as out:
        while piece := f.read(PIECE):
            start = time.perf_counter()
            produced = encryptor.update(piece)
            elapsed += time.perf_counter() - start
            out.write(produced)
            size += len(piece)
        start = time.perf_counter()
        tail, key = encryptor.finalize()
        elapsed += time.perf_counter() - start
        out.write(tail)
    encrypt = size / MB / elapsed
    decryptor = AttachmentDecryptor(key)
    elapsed = 0.0
    with open(cipher_path, "rb") as f:
        while piece := f.read(PIECE):
            start = time.perf_counter()
            decryptor.update(piece)
            elapsed += time.perf_counter() - start
        start = time.perf_counter()
        decryptor.finalize()
        elapsed += time.perf_counter() - start
    cipher_path.unlink()
    return encrypt, size / MB / elapsed


def file_copy_mb_s(path: Path, tmp: Path) -> float:
    start = time.perf_counter()
    shutil.copyfile(path, tmp / "copy.bin")
    with open(tmp / "copy.bin", "rb") as f:
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    (tmp / "copy.bin").unlink()
    return path.stat().st_size / MB / elapsed


async def transfer(server: ServerProcess, path: Path, tmp: Path) -> dict[str, Any]:
    suffix = secrets.token_hex(3)
    bob = await Client.create(server.base_url, MemoryStore())
    alice = await Client.create(server.base_url, MemoryStore())
    for c in (bob, alice):
        c.attachments.spool_dir = tmp / f"spool-{id(c)}"
    try:
        await bob.register(f"bob_{suffix}", "correct horse battery staple")
        await alice.register(f"alice_{suffix}", "correct horse battery staple")
        await alice.connect()
        cid = await bob.create_conversation([f"alice_{suffix}"])
        await bob.send_text(cid, "warm-up")
        await alice.next_event(MessageReceived, 30)
        size = path.stat().st_size
        with Sampler(server.pid) as sampler:
            start = time.perf_counter()
            await bob.send_file(cid, path, mime="application/octet-stream")
            upload_s = time.perf_counter() - start
            event = await alice.next_event(MessageReceived, 60)
            assert event.attachment is not None
            (tmp / "in").mkdir()
            start = time.perf_counter()
            got = await alice.download(event.attachment, tmp / "in")
            download_s = time.perf_counter() - start
        assert got.stat().st_size == size
        return {
            "upload_mb_s": round(size / MB / upload_s, 1),
            "download_mb_s": round(size / MB / download_s, 1),
            "end_to_end_mb_s": round(size / MB / (upload_s + download_s), 1),
            "upload_s": round(upload_s, 3),
            "download_s": round(download_s, 3),
            "padded_size": event.attachment.padded_size,
            **sampler.result(),
        }
    finally:
        await bob.close()
        await alice.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--store", choices=("filesystem", "database"), default="filesystem")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="saltline-bench-att-") as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "file.bin"
        with open(path, "wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(MB))
        log(f"file of {args.size_mb} MB written; starting the server")
        server = start_server(tmp, args.store)
        try:
            result = asyncio.run(transfer(server, path, tmp))
        finally:
            server.stop()
        raw, raw_decrypt = raw_secretstream_mb_s(path, tmp)
        copy = file_copy_mb_s(path, tmp)
    bound = 1 / (1 / raw + 1 / raw_decrypt)
    result = {
        "benchmark": "attachments",
        "size_mb": args.size_mb,
        "store": args.store,
        **result,
        "raw_secretstream_mb_s": round(raw, 1),
        "raw_secretstream_decrypt_mb_s": round(raw_decrypt, 1),
        # upload then download, each through one secretstream pass: no transfer can beat this
        "crypto_bound_mb_s": round(bound, 1),
        "file_copy_mb_s": round(copy, 1),
        "end_to_end_vs_raw_secretstream": round(result["end_to_end_mb_s"] / raw, 3),
        "end_to_end_vs_crypto_bound": round(result["end_to_end_mb_s"] / bound, 3),
        "machine": machine(),
        "versions": versions(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
