"""Attachments with the filesystem store and several processes on one data directory (``serve
--workers N``): the writers of one upload are serialised across processes, not only inside one.
Two live servers on one database and one data directory stand for two workers (each app has its
own in-process writer lock, as each worker does)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from saltline.crypto.keys import b64decode
from tests.live import LiveServer
from tests.server.helpers import register

TUS = {"Tus-Resumable": "1.0.0"}
MIB = 1024 * 1024
WAIT = 10.0


def _patch_head(server: LiveServer, headers: dict[str, str], ref: str, offset: int, length: int) -> bytes:
    lines = [
        f"PATCH /v1/attachments/{ref} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        f"Authorization: {headers['Authorization']}",
        "Tus-Resumable: 1.0.0",
        "Content-Type: application/offset+octet-stream",
        f"Upload-Offset: {offset}",
        f"Content-Length: {length}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _until(check: Callable[[], bool], what: str) -> None:
    """Poll an observable state (the file on disk, the stored offset) until it holds."""
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached: {what}")
        time.sleep(0.01)


def _answer(sock: socket.socket) -> bytes:
    sock.settimeout(WAIT)
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    return raw


def test_a_retry_on_another_worker_cannot_corrupt_what_the_first_commits(
    make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """PATCH A streams on worker 1 (2 MiB committed, 1 MiB more written, not committed); the
    client retries from the committed offset on worker 2 (PATCH B, same bytes). B must not
    truncate the file under A: A then commits 4 MiB whose middle B had cut to nothing (zeros),
    and the completed attachment is corrupt. The second writer is refused (409 with the offset
    once its body is read; counted as writer_busy)."""
    one = make_server(attachment_store="filesystem", attachment_commit_bytes=2 * MIB)
    two = make_server(migrate=False, attachment_store="filesystem", attachment_commit_bytes=2 * MIB)
    data = os.urandom(4 * MIB)
    with one.client() as c:
        alice = register(c)
        h = alice.first.headers
        r = c.post("/v1/attachments", headers={**h, **TUS, "Upload-Length": str(len(data))})
        assert r.status_code == 201, r.text
        ref = r.json()["attachment_id"]
    name = b64decode(ref).hex()
    path = tmp_path / "attachments" / name[:2] / name

    def busy(server: LiveServer) -> float:
        with server.client() as c:
            text = c.get("/metrics").text
        for line in text.splitlines():
            if line.startswith('saltline_attachments_refused_total{reason="writer_busy"}'):
                return float(line.rpartition(" ")[2])
        return 0.0

    def offset() -> int:
        with two.client() as c:
            return int(c.head(f"/v1/attachments/{ref}", headers={**h, **TUS}).headers["Upload-Offset"])

    with socket.create_connection(("127.0.0.1", one.port)) as a:
        a.sendall(_patch_head(one, h, ref, 0, len(data)) + data[: 3 * MIB + MIB // 2])
        # A has committed once (at 2 MiB or a little past) and written more since
        _until(
            lambda: offset() >= 2 * MIB and path.stat().st_size > offset(), "A: a commit, then more written"
        )
        committed = offset()

        with socket.create_connection(("127.0.0.1", two.port)) as b:
            b.sendall(_patch_head(two, h, ref, committed, MIB) + data[committed : committed + 100_000])
            # B is refused at once (it reads its body, then answers), or (the failure) opens
            # its writer: the file cut to the offset
            _until(lambda: busy(two) == 1 or path.stat().st_size == committed, "B refused or writing")
            a.sendall(data[3 * MIB + MIB // 2 :])
            answer_a = _answer(a)
            b.shutdown(socket.SHUT_WR)  # a client that gave B up
            _answer(b)  # (the server sees the body end early)
    assert answer_a.startswith(b"HTTP/1.1 204"), answer_a[:300]
    with httpx.Client(base_url=two.base_url, timeout=WAIT) as c:
        r = c.get(f"/v1/attachments/{ref}", headers=h)
    assert r.status_code == 200
    assert busy(one) == 0
    zeros = sum(1 for x, y in zip(r.content, data, strict=True) if x != y)
    assert zeros == 0, f"{zeros} bytes of the completed attachment differ from the upload"
    assert busy(two) == 1  # the second writer was refused (its client gone, it got no answer)
