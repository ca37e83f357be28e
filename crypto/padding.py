"""Padmé padding (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and
Communication with PURBs", PETS 2019): a length ``L`` is rounded up to the next length whose
binary form keeps only its top ``floor(log2(floor(log2 L))) + 1`` bits. The overhead is at most
about 12 % and a padded length leaks ``O(log log L)`` bits instead of ``O(log L)``.

Used for attachments: the client uploads ``padme(len(ciphertext))`` bytes and the server refuses
an upload whose announced length is not a Padmé bucket (:func:`is_padme`)."""

from __future__ import annotations

__all__ = ["is_padme", "padme"]


def padme(length: int) -> int:
    """The Padmé bucket of ``length`` (``padme(0) == 0``, ``padme(1) == 1``, ``padme(2) == 2``)."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError("length must be a non-negative int")
    if length < 2:
        return length
    e = length.bit_length() - 1  # floor(log2 L)
    s = e.bit_length()  # floor(log2 E) + 1
    last_bits = e - s
    mask = (1 << last_bits) - 1
    return (length + mask) & ~mask


def is_padme(length: int) -> bool:
    """Whether ``length`` is a Padmé bucket (its own padding)."""
    return length >= 0 and padme(length) == length
