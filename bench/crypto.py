"""Micro-benchmarks of the per-message cryptography. Prints one JSON document.

    .venv/bin/python bench/crypto.py

All times are microseconds per operation, measured one operation at a time with
``time.perf_counter`` (garbage collector paused while timing), after a warm-up.

* ``ratchet_encrypt_decrypt``: Double Ratchet encrypt + decrypt of a 200-byte message with a
  64-byte envelope AD, consecutive messages in one direction (no DH step). Each encrypt draws
  a random 24-byte nonce (header version 2, 65 bytes).
* ``nacl_box_fresh_encrypt_decrypt``: the same payload with ``nacl.public.Box`` objects created
  per message: ``Box(sk_a, pk_b).encrypt`` then ``Box(sk_b, pk_a).decrypt`` (two X25519).
* ``ratchet_dh_step_encrypt_decrypt``: encrypt + decrypt when the directions alternate, so the
  receiver steps the DH ratchet on every message (one key generation and two X25519).
* ``fanout_10_devices_encrypt``: one 200-byte message encrypted for 10 ratchet sessions.
"""

from __future__ import annotations

import datetime
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nacl
import nacl.public

from saltline.crypto import device_list as dl
from saltline.crypto.keys import AccountKey, DeviceDHKey, DeviceSigningKey, OneTimePreKey, SignedPreKey
from saltline.crypto.ratchet import Session, accept
from saltline.crypto.x3dh import DeviceIdentityKeys, InMemoryPreKeys, PreKeyBundle, initiate

ACCOUNT = AccountKey.generate()

PAYLOAD = bytes(range(200))
ENVELOPE_AD = bytes(64)


def _device(index: int) -> DeviceIdentityKeys:
    return DeviceIdentityKeys(index.to_bytes(16, "big"), DeviceSigningKey.generate(), DeviceDHKey.generate())


def _entry(device: DeviceIdentityKeys) -> dl.DeviceEntry:
    """The device's entry in a (verified) device list of the benchmark account."""
    return dl.bind_device(
        ACCOUNT.public_key, device.device_id, device.signing_key, device.dh_key.public_key, 0
    )


def _pair(initiator: DeviceIdentityKeys, index: int) -> tuple[Session, Session]:
    responder = _device(index)
    spk = SignedPreKey.generate_with_id(1)
    opk = OneTimePreKey.generate_with_id(1)
    bundle = PreKeyBundle(
        responder.device_id,
        responder.signing_key.public_key,
        responder.dh_key.public_key,
        spk.signed_public(responder.signing_key),
        opk.signed_public(responder.signing_key),
    )
    alice = Session.initiate(initiate(initiator, bundle, _entry(responder)))
    first = alice.encrypt(b"hello", ENVELOPE_AD)
    header = alice.pending_initial_header
    assert header is not None
    prekeys = InMemoryPreKeys([spk], [opk])
    bob = accept(responder, prekeys, header, first, ENVELOPE_AD, trusted=_entry(initiator)).session
    alice.decrypt(bob.encrypt(b"ack"))
    return alice, bob


def _measure(op: Callable[[], object], seconds: float, warmup: int = 200) -> dict[str, float | int]:
    for _ in range(warmup):
        op()
    samples: list[float] = []
    clock = time.perf_counter
    gc.collect()
    gc.disable()
    try:
        deadline = clock() + seconds
        while clock() < deadline:
            for _ in range(100):
                start = clock()
                op()
                samples.append(clock() - start)
    finally:
        gc.enable()
    samples.sort()
    return {
        "median_us": round(statistics.median(samples) * 1e6, 2),
        "p90_us": round(samples[int(len(samples) * 0.9)] * 1e6, 2),
        "iterations": len(samples),
    }


def main() -> None:
    alice_device = _device(0)
    alice, bob = _pair(alice_device, 1)

    def ratchet_one_way() -> None:
        if bob.decrypt(alice.encrypt(PAYLOAD, ENVELOPE_AD), ENVELOPE_AD) is None:
            raise AssertionError

    sk_a, sk_b = nacl.public.PrivateKey.generate(), nacl.public.PrivateKey.generate()
    pk_a, pk_b = sk_a.public_key, sk_b.public_key

    def box_fresh() -> None:
        sealed = nacl.public.Box(sk_a, pk_b).encrypt(PAYLOAD)
        nacl.public.Box(sk_b, pk_a).decrypt(sealed)

    turn = [0]
    step_a, step_b = _pair(alice_device, 2)

    def ratchet_alternating() -> None:
        sender, receiver = (step_a, step_b) if turn[0] % 2 == 0 else (step_b, step_a)
        turn[0] += 1
        receiver.decrypt(sender.encrypt(PAYLOAD, ENVELOPE_AD), ENVELOPE_AD)

    fanout = [_pair(alice_device, 10 + i)[0] for i in range(10)]

    def fanout_encrypt() -> None:
        for session in fanout:
            session.encrypt(PAYLOAD, ENVELOPE_AD)

    ratchet = _measure(ratchet_one_way, 1.2)
    box = _measure(box_fresh, 1.2)
    dh_step = _measure(ratchet_alternating, 1.0)
    fan = _measure(fanout_encrypt, 0.8)
    report = {
        "benchmark": "saltline crypto per-message",
        "payload_bytes": len(PAYLOAD),
        "envelope_ad_bytes": len(ENVELOPE_AD),
        "ratchet_encrypt_decrypt": ratchet,
        "nacl_box_fresh_encrypt_decrypt": box,
        "ratio_ratchet_to_fresh_box_median": round(float(ratchet["median_us"]) / float(box["median_us"]), 3),
        "ratchet_dh_step_encrypt_decrypt": dh_step,
        "fanout_10_devices_encrypt": {
            **fan,
            "per_device_median_us": round(float(fan["median_us"]) / 10, 2),
        },
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pynacl": nacl.__version__,
        "libsodium": "bundled with pynacl",
        "machine": platform.machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
