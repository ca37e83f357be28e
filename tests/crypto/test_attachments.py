"""Attachments over secretstream: round trips, framing, and every refused stream."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import nacl.bindings as sodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltline.crypto import attachments as att
from saltline.crypto.errors import EncodingError, InvalidKeyError, StreamError, UsageError

C = att.CHUNK_SIZE
CC = att.CHUNK_SIZE + att.ABYTES
H = att.HEADER_SIZE
KEY = bytes(range(32))
HEADER = bytes(range(100, 124))

# Regression / decrypt-only vector (key, header, plaintext -> ciphertext). Produced by this
# module; test_matches_libsodium_init_push shows the same bytes come from libsodium's init_push.
VECTOR_PLAINTEXT = b"Saltline attachment vector"
VECTOR_CIPHERTEXT = bytes.fromhex(
    "6465666768696a6b6c6d6e6f707172737475767778797a7b5c0f7bda32027ad859eea834f4d19b6d263d31c0"
    "73cd5b94003b287c42e8b4f0274dcc1b11f42f96302b6d"
)
VECTOR_DIGEST = bytes.fromhex("fc2bc477a4ac5e1ffdf7392060e28563a4bb221ebb2f6f9b3e4decec9fc049b3")


def fixed_rng(*values: bytes) -> Callable[[int], bytes]:
    queue = list(values)

    def rng(n: int) -> bytes:
        value = queue.pop(0)
        assert len(value) == n
        return value

    return rng


def payload(size: int) -> bytes:
    block = hashlib.sha256(str(size).encode()).digest()
    return (block * (size // 32 + 1))[:size]


def chunks_of(ciphertext: bytes) -> list[bytes]:
    body = ciphertext[H:]
    return [body[i : i + CC] for i in range(0, len(body), CC)]


@pytest.mark.parametrize("size", [0, 1, 1000, C - 1, C, C + 1, 2 * C, 2 * C + 5, 3 * C])
def test_round_trip_and_framing(size: int) -> None:
    data = payload(size)
    enc = att.encrypt(data)
    assert len(enc.ciphertext) == att.ciphertext_size(size)
    assert enc.key.digest == hashlib.sha256(enc.ciphertext).digest()
    assert enc.key.size == size and len(enc.key.key) == 32
    assert att.decrypt(enc.ciphertext, enc.key) == data
    assert att.decrypt(enc.ciphertext, enc.key.key) == data
    expected_chunks = max(1, -(-size // C))
    assert len(chunks_of(enc.ciphertext)) == expected_chunks
    assert all(len(c) == CC for c in chunks_of(enc.ciphertext)[:-1])


def test_empty_payload_is_one_empty_final_chunk() -> None:
    enc = att.encrypt(b"")
    assert len(enc.ciphertext) == H + att.ABYTES
    assert att.decrypt(enc.ciphertext, enc.key) == b""


def test_exact_multiple_ends_with_full_final_chunk() -> None:
    enc = att.encrypt(payload(2 * C), rng=fixed_rng(KEY, HEADER))
    parts = chunks_of(enc.ciphertext)
    assert [len(c) for c in parts] == [CC, CC]
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, HEADER, KEY)
    tags = [sodium.crypto_secretstream_xchacha20poly1305_pull(state, c, None)[1] for c in parts]
    assert tags == [att.TAG_MESSAGE, att.TAG_FINAL]


def test_vector_decrypts() -> None:
    key = att.AttachmentKey(KEY, VECTOR_DIGEST, len(VECTOR_PLAINTEXT))
    assert att.decrypt(VECTOR_CIPHERTEXT, key) == VECTOR_PLAINTEXT
    assert att.encrypt(VECTOR_PLAINTEXT, rng=fixed_rng(KEY, HEADER)).ciphertext == VECTOR_CIPHERTEXT


def test_deterministic_with_injected_rng() -> None:
    a = att.encrypt(payload(C + 10), rng=fixed_rng(KEY, HEADER))
    b = att.encrypt(payload(C + 10), rng=fixed_rng(KEY, HEADER))
    assert a == b
    assert a.ciphertext[:H] == HEADER
    c = att.encrypt(payload(C + 10), KEY, rng=fixed_rng(HEADER))
    assert c == a


def test_matches_libsodium_init_push() -> None:
    """The injected-header path yields exactly what libsodium's init_push + push produce."""
    data = payload(C + 321)
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, KEY)
    reference = (
        header
        + sodium.crypto_secretstream_xchacha20poly1305_push(state, data[:C], None, att.TAG_MESSAGE)
        + sodium.crypto_secretstream_xchacha20poly1305_push(state, data[C:], None, att.TAG_FINAL)
    )
    ours = att.encrypt(data, KEY, rng=fixed_rng(header))
    assert ours.ciphertext == reference


def test_iterable_input_and_streaming_output() -> None:
    data = payload(2 * C + 777)
    pieces = [data[:5], data[5 : C + 3], b"", data[C + 3 : 2 * C], data[2 * C :]]
    from_iter = att.encrypt(iter(pieces), KEY, rng=fixed_rng(HEADER))
    assert from_iter == att.encrypt(data, KEY, rng=fixed_rng(HEADER))
    encryptor = att.AttachmentEncryptor(KEY, rng=fixed_rng(HEADER))
    streamed = b"".join(encryptor.update(p) for p in pieces)
    tail, key = encryptor.finalize()
    assert streamed + tail == from_iter.ciphertext and key == from_iter.key
    with pytest.raises(UsageError):
        encryptor.update(b"more")
    with pytest.raises(UsageError):
        encryptor.finalize()
    for bad_key in (b"short", KEY + b"x"):
        with pytest.raises(InvalidKeyError):
            att.AttachmentEncryptor(bad_key, rng=fixed_rng(HEADER))
        with pytest.raises(InvalidKeyError):
            att.AttachmentDecryptor(bad_key)
    with pytest.raises(UsageError):
        att.AttachmentEncryptor(KEY, rng=lambda n: bytes(n - 1))
    with pytest.raises(UsageError):
        att.ciphertext_size(-1)
    out = list(
        att.iter_decrypt(
            (from_iter.ciphertext[i : i + 1000] for i in range(0, len(from_iter.ciphertext), 1000)), key
        )
    )
    assert b"".join(out) == data


# -- refused streams ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three() -> att.EncryptedAttachment:
    return att.encrypt(payload(2 * C + 500), rng=fixed_rng(KEY, HEADER))


def _refused(ciphertext: bytes, key: bytes | att.AttachmentKey = KEY) -> None:
    with pytest.raises(StreamError):
        att.decrypt(ciphertext, key)
    with pytest.raises(StreamError):
        list(att.iter_decrypt([ciphertext[i : i + 4096] for i in range(0, len(ciphertext), 4096)], key))


def test_truncation(three: att.EncryptedAttachment) -> None:
    ct = three.ciphertext
    parts = chunks_of(ct)
    _refused(ct[:H] + parts[0] + parts[1])  # at a chunk boundary: no FINAL
    _refused(ct[:H] + parts[0])
    _refused(ct[:H])  # header only
    _refused(ct[: H - 1])  # not even a header
    _refused(b"")
    _refused(ct[:-1])  # inside the last chunk
    _refused(ct[: H + CC + 100])  # inside a middle chunk


def test_truncation_of_exact_multiple() -> None:
    enc = att.encrypt(payload(2 * C), rng=fixed_rng(KEY, HEADER))
    _refused(enc.ciphertext[: H + CC])


def test_reordering(three: att.EncryptedAttachment) -> None:
    header, (a, b, c) = three.ciphertext[:H], chunks_of(three.ciphertext)
    _refused(header + b + a + c)
    _refused(header + a + a + c)  # replayed chunk
    _refused(header + a + c)  # dropped middle chunk


def test_extension(three: att.EncryptedAttachment) -> None:
    ct = three.ciphertext
    parts = chunks_of(ct)
    _refused(ct + b"\x00")
    _refused(ct + parts[-1])
    _refused(ct + parts[0])
    full = att.encrypt(payload(C), rng=fixed_rng(KEY, HEADER)).ciphertext  # a full FINAL chunk
    _refused(full + b"\x00")
    _refused(full + bytes(att.ABYTES))
    _refused(full + full[H:])


def test_tamper(three: att.EncryptedAttachment) -> None:
    ct = three.ciphertext
    for index in (0, H - 1, H, H + 1, H + CC - 1, H + CC, len(ct) - 17, len(ct) - 1):
        bad = bytearray(ct)
        bad[index] ^= 0x01
        _refused(bytes(bad))


def test_wrong_key(three: att.EncryptedAttachment) -> None:
    _refused(three.ciphertext, bytes(32))


def test_digest_and_size_checked(three: att.EncryptedAttachment) -> None:
    wrong_digest = att.AttachmentKey(KEY, bytes(32), three.key.size)
    with pytest.raises(StreamError, match="digest"):
        att.decrypt(three.ciphertext, wrong_digest)
    wrong_size = att.AttachmentKey(KEY, three.key.digest, three.key.size + 1)
    with pytest.raises(StreamError, match="size"):
        att.decrypt(three.ciphertext, wrong_size)
    dec = att.AttachmentDecryptor(wrong_digest)
    dec.update(three.ciphertext)
    with pytest.raises(StreamError, match="digest"):
        dec.finalize()


def _manual_stream(messages: list[tuple[bytes, int]]) -> bytes:
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    out = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, KEY)
    for message, tag in messages:
        out += sodium.crypto_secretstream_xchacha20poly1305_push(state, message, None, tag)
    return out


def test_non_canonical_framing_refused() -> None:
    # A short chunk that is not FINAL (followed by a FINAL one).
    _refused(_manual_stream([(b"short", att.TAG_MESSAGE), (b"end", att.TAG_FINAL)]))
    # Tags other than MESSAGE / FINAL.
    _refused(
        _manual_stream(
            [(b"x" * C, sodium.crypto_secretstream_xchacha20poly1305_TAG_PUSH), (b"", att.TAG_FINAL)]
        )
    )
    _refused(
        _manual_stream(
            [(b"x" * C, sodium.crypto_secretstream_xchacha20poly1305_TAG_REKEY), (b"e", att.TAG_FINAL)]
        )
    )
    # An empty FINAL chunk after a full one (the canonical form ends with the full chunk).
    _refused(_manual_stream([(b"x" * C, att.TAG_MESSAGE), (b"", att.TAG_FINAL)]))
    # The canonical forms built by hand are accepted.
    assert att.decrypt(_manual_stream([(b"x" * C, att.TAG_FINAL)]), KEY) == b"x" * C
    assert att.decrypt(_manual_stream([(b"", att.TAG_FINAL)]), KEY) == b""


def test_attachment_key_encoding() -> None:
    key = att.AttachmentKey(KEY, VECTOR_DIGEST, 26)
    enc = key.encode()
    assert len(enc) == 73 and enc[0] == 1 and enc[1:33] == KEY and enc[33:65] == VECTOR_DIGEST
    assert enc[65:] == (26).to_bytes(8, "big")
    assert att.AttachmentKey.decode(enc) == key
    for bad in (enc[:-1], enc + b"\x00", b"\x02" + enc[1:]):
        with pytest.raises(EncodingError):
            att.AttachmentKey.decode(bad)
    assert KEY.hex() not in repr(key) and "<secret>" in repr(key)
    with pytest.raises(EncodingError):
        att.AttachmentKey(KEY[:31], VECTOR_DIGEST, 0)
    with pytest.raises(EncodingError):
        att.AttachmentKey(KEY, VECTOR_DIGEST, -1)


@settings(max_examples=25, deadline=None)
@given(size=st.integers(min_value=0, max_value=3 * C + 100), split=st.integers(min_value=1, max_value=C + 50))
def test_property_round_trip(size: int, split: int) -> None:
    data = payload(size)
    enc = att.encrypt((data[i : i + split] for i in range(0, len(data), split)), rng=fixed_rng(KEY, HEADER))
    assert len(enc.ciphertext) == att.ciphertext_size(size)
    ct = enc.ciphertext
    got = b"".join(att.iter_decrypt((ct[i : i + split] for i in range(0, len(ct), split)), enc.key))
    assert got == data


@settings(max_examples=25, deadline=None)
@given(size=st.integers(min_value=0, max_value=2 * C + 10), data=st.data())
def test_property_any_truncation_refused(size: int, data: st.DataObject) -> None:
    ct = att.encrypt(payload(size), rng=fixed_rng(KEY, HEADER)).ciphertext
    cut = data.draw(st.integers(min_value=0, max_value=len(ct) - 1))
    with pytest.raises(StreamError):
        att.decrypt(ct[:cut], KEY)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(min_value=0, max_value=3 * C + 100), data=st.data())
def test_property_any_piece_boundaries_decrypt_and_any_extension_is_refused(
    size: int, data: st.DataObject
) -> None:
    """The decryptor takes whole chunks straight from a piece and holds the rest back: any
    boundaries give the plaintext (with a bare key or an AttachmentKey), and bytes after the
    FINAL chunk are refused wherever they fall."""
    plain = payload(size)
    enc = att.encrypt(plain, rng=fixed_rng(KEY, HEADER))
    ct = enc.ciphertext
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(ct)), max_size=8)))
    pieces = [ct[a:b] for a, b in zip([0, *cuts], [*cuts, len(ct)], strict=True)]
    for key in (KEY, enc.key):
        dec = att.AttachmentDecryptor(key)
        assert b"".join(dec.update(p) for p in pieces) + dec.finalize() == plain
    extra = data.draw(st.binary(min_size=1, max_size=C + 40))
    split = data.draw(st.integers(min_value=0, max_value=len(ct)))
    dec = att.AttachmentDecryptor(KEY)
    with pytest.raises(StreamError):
        dec.update(ct[:split])
        dec.update(ct[split:] + extra)
        dec.finalize()


def test_ciphertext_hash_is_the_running_digest() -> None:
    enc = att.AttachmentEncryptor(KEY, rng=fixed_rng(HEADER))
    out = enc.update(payload(C + 7))
    assert enc.ciphertext_hash().digest() == hashlib.sha256(out).digest()
    tail, key = enc.finalize()
    running = enc.ciphertext_hash()
    assert running.digest() == key.digest == hashlib.sha256(out + tail).digest()
    running.update(b"\0" * 5)  # a copy: extending it leaves the encryptor's alone
    assert enc.ciphertext_hash().digest() == key.digest
