"""What the vector tests share (docs/protocol/vectors.md § 1): the documented deterministic rng,
loading the JSON files, and picking their cases."""

from __future__ import annotations

import functools
import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

VECTOR_DIR = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "vectors"
Case = dict[str, Any]
#: The vector files of parts 2 and 3 (docs/protocol/vectors.md § 5).
PART_2_3_FILES = (
    "envelope_ad.json",
    "device_ciphertexts.json",
    "padding.json",
    "clocks.json",
    "ops.json",
    "linking.json",
    "login.json",
    "seen_base_keys.json",
    "attachments_pointer.json",
)


class DRng:
    """The documented vector rng: call k (from 1) asking n bytes returns the first n bytes of
    SHA-256(seed || u32(k) || u32(0)) || SHA-256(seed || u32(k) || u32(32)) || ..."""

    def __init__(self, label: str) -> None:
        self.seed = label.encode("utf-8")
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        k = len(self.draws) + 1
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self.seed + struct.pack(">II", k, len(out))).digest()
        self.draws.append(out[:n])
        return out[:n]


def fixed_rng(*values: bytes) -> Callable[[int], bytes]:
    queue = list(values)

    def rng(n: int) -> bytes:
        value = queue.pop(0)
        assert len(value) == n
        return value

    return rng


def no_rng(n: int) -> bytes:
    raise AssertionError("randomness drawn where none is allowed")


def b(value: str) -> bytes:
    return bytes.fromhex(value)


@functools.cache
def load(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((VECTOR_DIR / name).read_text(encoding="utf-8"))
    return result


def case(name: str, case_name: str) -> Case:
    found: Case
    for found in load(name)["cases"]:
        if found["name"] == case_name:
            return found
    raise KeyError(case_name)


def positives(name: str) -> list[Any]:
    return [pytest.param(c, id=c["name"]) for c in load(name)["cases"] if "error" not in c]


def negatives(name: str) -> list[Any]:
    return [pytest.param(c, id=c["name"]) for c in load(name)["cases"] if "error" in c]
