"""Attachments end to end, the SDK against the real server (SQLite and PostgreSQL, both attachment
stores): a 20 MB file reaches both of alice's devices; an upload whose answers are lost resumes
and is sent exactly once, also across a restart; a download cut midway resumes; a tampered,
truncated or swapped blob is refused with a typed error and leaves nothing; an unknown id reads
nothing; limits answer typed errors; the server's storage holds no plaintext.

The faults are real: the requests reach the real server, and the httpx transport under the client
loses the answer or breaks the body off afterwards (as a dropped connection does). Waits are on
events with timeouts, never on sleeps."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from saltline.client_sdk.client import Client
from saltline.client_sdk.core.attachments import AttachmentPointer
from saltline.client_sdk.core.events import MessageReceived
from saltline.client_sdk.errors import (
    AttachmentError,
    AttachmentIntegrityError,
    AttachmentTooLargeError,
    AttachmentUnavailableError,
    NetworkError,
)
from saltline.client_sdk.facets.attachments import SETTING_UPLOAD, SETTING_UPLOADS
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.client_sdk.stores.sqlite import SqliteStore
from tests.linking import link
from tests.live import LiveServer

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
WAIT = 30.0
MARKER = b"SALTLINE-PLAINTEXT-MARKER-" + b"7" * 20


class Faulty(httpx.AsyncBaseTransport):
    """A real transport to the real server that can lose the answers of some requests (after the
    server handled them), break an upload's body off after ``cut_upload_after`` bytes (the
    connection closes midway) or a download's body after ``cut_after`` bytes."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lose_patch_answers: set[int] = set()  # indexes of PATCHes whose answer is lost
        self.down = False  # every request fails before reaching the server
        self.cut_after: int | None = None  # break the next download body after this many bytes
        self.cut_upload_after: int | None = None  # break the next PATCH body after this many bytes
        self.down_after_cut = False  # and then refuse every request
        self.patches = 0
        self.patch_offsets: list[int] = []  # Upload-Offset of every PATCH sent

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused (test)")
        if request.method == "PATCH":
            self.patch_offsets.append(int(request.headers["upload-offset"]))
            if self.cut_upload_after is not None:
                limit, self.cut_upload_after = self.cut_upload_after, None
                request.stream = _Stream(self._cut_upload(request.stream, limit))  # type: ignore[arg-type]
        response = await self.inner.handle_async_request(request)
        if request.method == "PATCH":
            index = self.patches
            self.patches += 1
            if index in self.lose_patch_answers:
                await response.aread()
                await response.aclose()
                raise httpx.ReadError("connection reset (test)")
        if request.method == "GET" and self.cut_after is not None and "/v1/attachments/" in str(request.url):
            limit, self.cut_after = self.cut_after, None
            self.down = self.down_after_cut
            stream = response.stream

            async def broken() -> AsyncIterator[bytes]:
                sent = 0
                async for piece in stream:  # type: ignore[union-attr]
                    if sent + len(piece) > limit:
                        yield piece[: limit - sent]
                        raise httpx.ReadError("connection reset mid-body (test)")
                    sent += len(piece)
                    yield piece

            return httpx.Response(
                response.status_code, headers=response.headers, stream=_Stream(broken()), request=request
            )
        return response

    async def _cut_upload(self, stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
        sent = 0
        async for piece in stream:
            if sent + len(piece) >= limit:
                yield piece[: limit - sent]
                self.down = self.down_after_cut
                raise httpx.WriteError("connection reset mid-upload (test)")
            sent += len(piece)
            yield piece

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Stream(httpx.AsyncByteStream):
    def __init__(self, it: AsyncIterator[bytes]) -> None:
        self._it = it

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self._it:
            yield piece


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _name(prefix: str) -> str:
    return f"{prefix}_{os.urandom(3).hex()}"


def _file(path: Path, size: int) -> bytes:
    data = MARKER + os.urandom(size - 2 * len(MARKER)) + MARKER
    path.write_bytes(data)
    return data


async def _new(
    server: LiveServer, tmp: Path, store: object = None, transport: httpx.AsyncBaseTransport | None = None
) -> Client:
    client = await Client.create(server.base_url, store or MemoryStore(), http_transport=transport)  # type: ignore[arg-type]
    client.attachments.spool_dir = tmp / f"spool-{os.urandom(3).hex()}"
    return client


async def _attachment(client: Client) -> MessageReceived:
    while True:
        event = await client.next_event(MessageReceived, WAIT)
        if event.attachment is not None:
            return event


@pytest.fixture(params=["filesystem", "database"])
def server(request: pytest.FixtureRequest, make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(attachment_store=request.param)


async def test_20mb_file_reaches_both_devices_and_the_server_holds_no_plaintext(
    server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("clients")
    alice_name, bob_name = _name("alice"), _name("bob")
    desk = await _new(server, tmp)
    await desk.register(alice_name, PASSWORD)
    phone = await _new(server, tmp)
    await link(desk, phone, wait_s=WAIT)
    bob = await _new(server, tmp)
    await bob.register(bob_name, PASSWORD)
    try:
        for c in (desk, phone, bob):
            await c.connect()
        cid = await bob.create_conversation([alice_name])
        data = _file(tmp / "holiday.mp4", 20 * 1024 * 1024)
        progress: list[tuple[int, int]] = []
        await bob.send_file(
            cid,
            tmp / "holiday.mp4",
            mime="video/mp4",
            caption="our trip",
            progress=lambda d, t: progress.append((d, t)),
        )
        assert progress[-1][0] == progress[-1][1] >= len(data)
        assert not any(bob.attachments.spool_dir.iterdir())  # the spool file is gone once sent
        for device in (desk, phone):
            event = await _attachment(device)
            pointer = event.attachment
            assert pointer is not None
            assert (event.text, pointer.name, pointer.mime, pointer.size) == (
                "our trip",
                "holiday.mp4",
                "video/mp4",
                len(data),
            )
            out = tmp / f"{device.device_id[:6]}-dl"
            out.mkdir()
            path = await device.download(pointer, out)
            assert path == out / "holiday.mp4"
            assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
            assert os.listdir(out) == ["holiday.mp4"]  # no part or temporary file left
    finally:
        for c in (desk, phone, bob):
            await c.close()
    # the server's storage: its data directory (files, SQLite) and its database hold no plaintext
    for f in server.settings.data_dir.rglob("*"):
        if f.is_file() and f.name != "holiday.mp4" and "clients" not in str(f):
            assert MARKER not in f.read_bytes(), f
    if server.settings.database_url.startswith("postgresql"):
        engine = create_engine(server.settings.database_url.replace("+asyncpg", "+psycopg"))
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT data FROM attachment_chunks")).all()
        engine.dispose()
        assert all(MARKER not in bytes(r.data) for r in rows)


async def test_lost_answers_resume_and_the_message_is_sent_exactly_once(
    live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("clients")
    faulty = Faulty()
    bob_store = tmp / "bob.db"
    bob = await _new(live_server, tmp, SqliteStore.open(bob_store), faulty)
    await bob.register(_name("bob"), PASSWORD)
    alice_name = _name("alice")
    alice = await _new(live_server, tmp)
    await alice.register(alice_name, PASSWORD)
    await alice.connect()
    cid = await bob.create_conversation([alice_name])
    data = _file(tmp / "a.bin", 5 * 1024 * 1024)
    # the answer of the one PATCH (the whole upload) is lost after the server stored it
    faulty.lose_patch_answers = {0}
    await bob.send_file(cid, data, name="a.bin")
    assert faulty.patch_offsets == [0]
    # a PATCH cut off midway: the server keeps what arrived; the rest goes from its offset (a
    # retry racing the server's noticing the cut gets 409 and asks again)
    faulty.patch_offsets, cut = [], 2 * 1024 * 1024 + 12345
    faulty.cut_upload_after = cut
    await bob.send_file(cid, data, name="a2.bin")
    assert faulty.patch_offsets[0] == 0 and 0 < faulty.patch_offsets[-1] <= cut
    assert len(faulty.patch_offsets) <= 4
    # then a restart midway: the network goes down during an upload
    faulty.patches = 0
    faulty.lose_patch_answers = set()
    spool = bob.attachments.spool_dir
    faulty.cut_upload_after, faulty.down_after_cut = 2 * 1024 * 1024, True
    with pytest.raises(NetworkError):
        await bob.send_file(cid, data, name="b.bin")
    await bob.close()
    bob.store.close()  # type: ignore[attr-defined]
    bob = await _new(live_server, tmp, SqliteStore.open(bob_store))
    bob.attachments.spool_dir = spool
    assert len(await bob.resume_uploads()) == 1
    assert await bob.resume_uploads() == []  # nothing twice
    try:
        names = []
        for _ in range(3):
            event = await _attachment(alice)
            assert event.attachment is not None
            names.append(event.attachment.name)
            path = await alice.download(event.attachment, tmp / f"out-{event.attachment.name}")
            assert path.read_bytes() == data
        assert sorted(names) == ["a.bin", "a2.bin", "b.bin"]
        await bob.flush_outbox()
        assert bob.outbox() == []
        with pytest.raises(TimeoutError):  # no fourth message
            await alice.next_event(MessageReceived, 1.0)
    finally:
        await bob.close()
        await alice.close()


async def test_download_cut_midway_resumes_and_bad_blobs_are_refused(
    server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("clients")
    faulty = Faulty()
    alice_name = _name("alice")
    alice = await _new(server, tmp, transport=faulty)
    await alice.register(alice_name, PASSWORD)
    bob = await _new(server, tmp)
    await bob.register(_name("bob"), PASSWORD)
    await alice.connect()
    cid = await bob.create_conversation([alice_name])
    try:
        first, second = os.urandom(3 * 1024 * 1024), os.urandom(100_000)
        await bob.send_file(cid, first, name="first.bin")
        await bob.send_file(cid, second, name="second.bin")
        p1 = (await _attachment(alice)).attachment
        p2 = (await _attachment(alice)).attachment
        assert p1 is not None and p2 is not None
        # cut midway: the same call resumes with Range and completes
        faulty.cut_after = 1_500_000
        seen: list[int] = []
        path = await alice.download(p1, tmp / "first.bin", progress=lambda d, t: seen.append(d))
        assert path.read_bytes() == first
        assert faulty.cut_after is None and any(d < 1_500_001 for d in seen)
        # a cut whose retries also fail leaves a part; a later call resumes it
        faulty.cut_after, faulty.down_after_cut = 1_000_000, True
        with pytest.raises(NetworkError):
            await alice.download(p1, tmp / "again.bin")
        faulty.down = faulty.down_after_cut = False
        assert not (tmp / "again.bin").exists() and (tmp / "again.bin.saltline-part").exists()
        assert (await alice.download(p1, tmp / "again.bin")).read_bytes() == first
        assert not (tmp / "again.bin.saltline-part").exists()
        # swapped: the pointer names another attachment (the server serves other bytes)
        swapped = replace(p2, id=p1.id)
        with pytest.raises(AttachmentIntegrityError):
            await alice.download(swapped, tmp / "swapped.bin")
        # a pointer whose key does not fit (the digest matches: the sender lied)
        wrong_key = replace(p2, key=os.urandom(32))
        with pytest.raises(AttachmentIntegrityError):
            await alice.download(wrong_key, tmp / "wrongkey.bin")
        # a device without the id reads nothing
        with pytest.raises(AttachmentUnavailableError):
            await alice.download(replace(p2, id=os.urandom(32)), tmp / "unknown.bin")
        if server.settings.attachment_store == "filesystem":
            # tampered / truncated on the server's disk
            blob = server.settings.data_dir / "attachments" / p2.id.hex()[:2] / p2.id.hex()
            raw = bytearray(blob.read_bytes())
            raw[5000] ^= 1
            blob.write_bytes(bytes(raw))
            with pytest.raises(AttachmentIntegrityError):
                await alice.download(p2, tmp / "tampered.bin")
            raw[5000] ^= 1
            blob.write_bytes(bytes(raw[: len(raw) // 2]))
            with pytest.raises((AttachmentIntegrityError, NetworkError)):
                await alice.download(p2, tmp / "truncated.bin")
        leftovers = {p.name for p in tmp.iterdir() if p.is_file()}
        assert leftovers <= {"first.bin", "again.bin", "truncated.bin.saltline-part"}, leftovers
    finally:
        await alice.close()
        await bob.close()


@pytest.fixture
def small_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(max_attachment_bytes=64 * 1024)


async def test_too_large_is_a_typed_error_and_leaves_no_spool(
    small_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = small_server
    tmp = tmp_path_factory.mktemp("clients")
    bob = await _new(server, tmp)
    await bob.register(_name("bob"), PASSWORD)
    alice_name = _name("alice")
    alice = await _new(server, tmp)
    await alice.register(alice_name, PASSWORD)
    try:
        cid = await bob.create_conversation([alice_name])
        with pytest.raises(AttachmentTooLargeError) as info:
            await bob.send_file(cid, os.urandom(100_000), name="big.bin")
        assert info.value.limit == 64 * 1024
        assert not any(bob.attachments.spool_dir.iterdir())
        assert bob.outbox() == []
        # a source that fails while it is encrypted (its upload already created): the error,
        # no spool, no record left to resume, no message
        unreadable = tmp / "a-directory"
        unreadable.mkdir()
        with pytest.raises(AttachmentError) as failed:  # a SaltlineError, with the OS's reason
            await bob.send_file(cid, unreadable, name="dir.bin")
        assert isinstance(failed.value.__cause__, IsADirectoryError)
        assert not any(bob.attachments.spool_dir.iterdir())
        assert await bob.resume_uploads() == []
        assert bob.outbox() == []
    finally:
        await bob.close()
        await alice.close()


def test_pointer_round_trip_and_refusals() -> None:
    from saltline.client_sdk.core.attachments import PointerError, padded_size

    p = AttachmentPointer(
        os.urandom(32), os.urandom(32), os.urandom(32), padded_size(10), 10, "a.txt", "text/plain"
    )
    assert AttachmentPointer.from_json(p.to_json()) == p
    for bad in (
        {**p.to_json(), "size": 1000},
        {**p.to_json(), "name": "../x"},
        {**p.to_json(), "mime": "Text"},
        {**p.to_json(), "extra": 1},
    ):
        with pytest.raises(PointerError):
            AttachmentPointer.from_json(bad)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_auto_download_and_history_for_a_new_device(
    live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A small file is downloaded by itself (``set_auto_download``), a large one is not; a device
    linked later with the history gets the pointers and can download within retention."""
    from saltline.client_sdk.core.attachments import pointer_of
    from saltline.client_sdk.core.events import AttachmentDownloaded

    tmp = tmp_path_factory.mktemp("clients")
    alice_name = _name("alice")
    alice = await _new(live_server, tmp)
    await alice.register(alice_name, PASSWORD)
    bob = await _new(live_server, tmp)
    await bob.register(_name("bob"), PASSWORD)
    alice.set_auto_download(50_000, tmp / "auto")
    await alice.connect()
    cid = await bob.create_conversation([alice_name])
    small, large = os.urandom(10_000), os.urandom(200_000)
    tablet: Client | None = None
    try:
        await bob.send_file(cid, small, name="small.txt", mime="text/plain")
        await bob.send_file(cid, large, name="large.bin")
        done = await alice.next_event(AttachmentDownloaded, WAIT)
        assert _read(done.path) == small and os.path.dirname(done.path) == str(tmp / "auto")
        await _attachment(alice)
        await _attachment(alice)
        with pytest.raises(TimeoutError):  # the large one is not fetched by itself
            await alice.next_event(AttachmentDownloaded, 1.0)
        assert len(os.listdir(tmp / "auto")) == 1
        tablet = await _new(live_server, tmp)
        await link(alice, tablet, wait_s=WAIT)
        pointers = [p for p in (pointer_of(m.body) for m in tablet.messages(cid)) if p is not None]
        assert sorted(p.name for p in pointers) == ["large.bin", "small.txt"]
        view = await tablet.conversation(cid)  # the conversation view carries them too
        assert sorted(m.attachment.name for m in view.messages if m.attachment is not None) == [
            "large.bin",
            "small.txt",
        ]
        for p in pointers:
            path = await tablet.download(p, tmp / f"tablet-{p.name}")
            assert path.read_bytes() == (small if p.name == "small.txt" else large)
    finally:
        for c in (alice, bob, tablet):
            if c is not None:
                await c.close()


_CHILD = """
import asyncio, sys, time
from pathlib import Path
from saltline.client_sdk.client import Client
from saltline.client_sdk.stores.sqlite import SqliteStore

url, store_path, spool, cid, source = sys.argv[1:6]

def stop_here(done, total):
    if done >= 2 * 1024 * 1024:
        print("UPLOADING", flush=True)
        time.sleep(3600)  # blocks the loop: the parent kills the process now

async def main():
    client = await Client.create(url, SqliteStore.open(store_path))
    client.attachments.spool_dir = Path(spool)
    await client.send_file(cid, source, name="killed.bin", progress=stop_here)

asyncio.run(main())
"""


def _spawn(argv: list[str]) -> subprocess.Popen[str]:
    root = Path(__file__).resolve().parents[2]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_an_upload_whose_process_was_killed_resumes_once(
    live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import signal
    import sys

    tmp = tmp_path_factory.mktemp("clients")
    store_path, spool = tmp / "bob.db", tmp / "spool"
    bob = await _new(live_server, tmp, SqliteStore.open(store_path))
    await bob.register(_name("bob"), PASSWORD)
    alice_name = _name("alice")
    alice = await _new(live_server, tmp)
    await alice.register(alice_name, PASSWORD)
    await alice.connect()
    cid = await bob.create_conversation([alice_name])
    await bob.close()
    bob.store.close()  # type: ignore[attr-defined]
    data = _file(tmp / "big.bin", 6 * 1024 * 1024)
    child = _spawn(
        [
            sys.executable,
            "-c",
            _CHILD,
            live_server.base_url,
            str(store_path),
            str(spool),
            cid,
            str(tmp / "big.bin"),
        ]
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), WAIT)
        assert line.strip() == "UPLOADING", child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
    finally:
        if child.poll() is None:
            child.kill()
    assert len(os.listdir(spool)) == 1  # the spool file awaits the resume
    bob = await _new(live_server, tmp, SqliteStore.open(store_path))
    bob.attachments.spool_dir = spool
    try:
        assert len(await bob.resume_uploads()) == 1
        assert await bob.resume_uploads() == []
        assert os.listdir(spool) == []
        event = await _attachment(alice)
        assert event.attachment is not None and event.attachment.name == "killed.bin"
        assert _read(str(await alice.download(event.attachment, tmp / "got.bin"))) == data
        with pytest.raises(TimeoutError):
            await alice.next_event(MessageReceived, 1.0)
    finally:
        await bob.close()
        await alice.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_restart_while_encrypting_encrypts_the_file_again_and_sends_it_once(
    live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A file's upload starts while it is encrypted; a restart then may find its spool cut short
    and no digest recorded. The file is encrypted again with the recorded key and header (the
    same bytes, so the server's prefix stays valid) and sent exactly once; a file that changed
    meanwhile cannot be redone and is dropped."""
    tmp = tmp_path_factory.mktemp("clients")
    faulty = Faulty()
    store_path = tmp / "bob.db"
    bob = await _new(live_server, tmp, SqliteStore.open(store_path), faulty)
    await bob.register(_name("bob"), PASSWORD)
    alice_name = _name("alice")
    alice = await _new(live_server, tmp)
    await alice.register(alice_name, PASSWORD)
    await alice.connect()
    cid = await bob.create_conversation([alice_name])
    data = _file(tmp / "c.bin", 3 * 1024 * 1024)
    _file(tmp / "d.bin", 3 * 1024 * 1024)
    for name in ("c.bin", "d.bin"):
        faulty.down = False
        faulty.cut_upload_after, faulty.down_after_cut = 1024 * 1024, True
        with pytest.raises(NetworkError):
            await bob.send_file(cid, tmp / name)
    spool = bob.attachments.spool_dir
    # as if the restart had come while the spools were written: cut short, no digest yet
    sync_store = bob.store.sync
    for spool_name in json.loads(sync_store.get_setting(SETTING_UPLOADS) or "[]"):
        record = json.loads(sync_store.get_setting(SETTING_UPLOAD + spool_name) or "{}")
        assert record["digest"] and record["source"]
        record["digest"] = ""
        sync_store.put_setting(SETTING_UPLOAD + spool_name, json.dumps(record))
        os.truncate(record["spool"], 1536 * 1024)
    (tmp / "d.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # changed since: cannot be redone
    await bob.close()
    bob.store.close()  # type: ignore[attr-defined]
    bob = await _new(live_server, tmp, SqliteStore.open(store_path))
    bob.attachments.spool_dir = spool
    try:
        assert len(await bob.resume_uploads()) == 1
        assert await bob.resume_uploads() == []
        assert os.listdir(spool) == []
        event = await _attachment(alice)
        assert event.attachment is not None and event.attachment.name == "c.bin"
        assert _read(str(await alice.download(event.attachment, tmp / "got.bin"))) == data
        with pytest.raises(TimeoutError):
            await alice.next_event(MessageReceived, 1.0)
    finally:
        await bob.close()
        await alice.close()
