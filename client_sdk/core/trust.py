"""Device-list trust and fan-out rules.

Rules (checked in this order by the client):

1. A device list is used only after it verified under the account key this device pinned for the
   account (first contact pins the key the first list names: trust on first use) and the username
   it looked up (:func:`advance`).
2. A newer list must be the successor of the last verified one (version + 1, previous hash):
   :class:`~saltline.crypto.device_list.DeviceListChainVerifier` over the chain since the known version.
   Rollback, fork, broken chain, bad signature, unbound device: :class:`UntrustedDeviceListError`.
3. A chain may rotate the account key with a succession signed by the pinned key
   (docs/protocol/device-lists.md § 3.4): the new key is pinned in its place and the contact keeps
   its trust state (verified, policy): :attr:`Verified.rotated`, an informational event, no alarm.
   A chain whose lists name another account key than the pinned one, with no such succession, is
   an identity change
   (:class:`KeyMismatch`): the whole chain of the new key must verify (:func:`first_contact`), and
   the contact's policy decides: "warn" adopts it (event), "block" keeps it pending and refuses to
   send until the user verifies the contact.
4. Fan-out: every device of every member account's verified list, the sender's own account
   included, minus the sending device (:func:`fan_out`). Nothing else can be addressed.
5. A device id belongs to one account: a list naming a device id another known account's list
   names is refused (:func:`device_id_collisions`); sessions are used only with the account and
   the exact identity keys they were set up with (:func:`saltline.client_sdk.core.message.session_binds`).
6. A username is pinned to the account first seen with it (:func:`username_taken`).
7. A verified list is re-fetched before sending once it is older than a bound (:func:`refresh_due`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from saltline.client_sdk.errors import UntrustedDeviceListError
from saltline.crypto import device_list as dl
from saltline.crypto.errors import CryptoError, UnknownSignerError
from saltline.crypto.keys import AccountPublicKey, b64encode


class KeyMismatch(Exception):
    """The server's lists name another account key than the pinned one."""


@dataclass(frozen=True, slots=True)
class Verified:
    account_key: bytes
    signed_list: bytes
    version: int
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: bool
    rotated: bool = False  # the chain moved the account key on through a verified succession
    #: every account key the verified chain used, oldest first (root, then each successor)
    keys: tuple[bytes, ...] = ()


def _ids(content: dl.DeviceList | None) -> set[str]:
    return set() if content is None else {b64encode(d.device_id) for d in content.devices}


def first_contact(username: str, chain: Sequence[bytes]) -> Verified:
    """Verify a whole chain (from version 1) under the key its first list names (TOFU)."""
    if not chain:
        raise UntrustedDeviceListError(f"the server returned no device list for {username!r}")
    try:
        head = dl.SignedDeviceList.decode(chain[0])
        if head.version != 1:
            raise UntrustedDeviceListError("the device-list chain does not start at version 1")
        verifier = dl.DeviceListChainVerifier(head.content.account_key, expected_username=username)
        content = verifier.verify_chain(list(chain))
        keys = _keys(chain)
    except CryptoError as exc:
        raise UntrustedDeviceListError(f"device list of {username!r} refused: {exc}") from exc
    assert verifier.latest is not None
    return Verified(
        bytes(content.account_key),
        verifier.latest.encode(),
        content.version,
        tuple(sorted(_ids(content))),
        (),
        True,
        len(keys) > 1,
        keys,
    )


def _keys(chain: Sequence[bytes]) -> tuple[bytes, ...]:
    return _dedup(tuple(bytes(dl.SignedDeviceList.decode(raw).content.account_key) for raw in chain))


def _dedup(keys: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """Consecutive repeats removed (a key signs a run of versions)."""
    out: list[bytes] = []
    for key in keys:
        if not out or out[-1] != key:
            out.append(key)
    return tuple(out)


def advance(username: str, pinned_key: bytes, known_list: bytes, chain: Sequence[bytes]) -> Verified:
    """Verify ``chain`` (lists after ``known_list``, oldest first) as its successors under the
    pinned key. Raises :class:`KeyMismatch` or :class:`UntrustedDeviceListError`."""
    key = AccountPublicKey(pinned_key)
    known = dl.SignedDeviceList.decode(known_list)
    if not chain:
        return Verified(pinned_key, known_list, known.version, (), (), False)
    try:
        verifier = dl.DeviceListChainVerifier(key, known, expected_username=username)
        content = verifier.verify_chain(list(chain))
    except UnknownSignerError as exc:
        raise KeyMismatch(str(exc)) from exc
    except CryptoError as exc:
        raise UntrustedDeviceListError(f"device list of {username!r} refused: {exc}") from exc
    assert verifier.latest is not None
    # every step counts: a device added and removed again between two refreshes is in both
    added: set[str] = set()
    removed: set[str] = set()
    previous = _ids(known.content)
    for raw in chain:
        step = _ids(dl.SignedDeviceList.decode(raw).content)
        added |= step - previous
        removed |= previous - step
        previous = step
    new_key = bytes(content.account_key)
    return Verified(
        new_key,
        verifier.latest.encode(),
        content.version,
        tuple(sorted(added)),
        tuple(sorted(removed)),
        content.version != known.version,
        new_key != pinned_key,
        _dedup((pinned_key, *_keys(chain))),
    )


def refuse_fork(known_list: bytes, chain: Sequence[bytes]) -> None:
    """Rule 3's exception: a chain with another account key that starts from the same root key as
    the list this device verified is not a new identity but a **fork** of the same account (a
    holder of an old key — a thief after a rotation — signing another branch). It is refused,
    never adopted under any policy: :class:`UntrustedDeviceListError`."""
    known = dl.SignedDeviceList.decode(known_list)
    if not chain:
        return
    head = dl.SignedDeviceList.decode(chain[0]).content
    if head.root != known.content.root:
        return  # a new root: an account reset, an identity change for the policy to decide
    for raw in chain:
        other = dl.SignedDeviceList.decode(raw)
        if other.version == known.version and raw != known_list:
            raise UntrustedDeviceListError(
                f"fork: the server shows two different device lists at version {known.version} of the "
                "same account (a holder of an old account key signed another branch); refused"
            )
    raise UntrustedDeviceListError(
        "fork: the server shows another branch of the same account's device-list chain; refused"
    )


def verified_content(account_key: bytes, signed_list: bytes) -> dl.DeviceList:
    """Verify a stored list against the pinned key and return its content. The result is a pure
    function of the two byte strings, so it is remembered for the last few hundred pairs (every
    send and every received envelope asks for the same lists): a changed or tampered list is a
    different pair and is verified again."""
    return _verified_content(bytes(account_key), bytes(signed_list))


@functools.lru_cache(maxsize=512)
def _verified_content(account_key: bytes, signed_list: bytes) -> dl.DeviceList:
    try:
        return dl.verify(dl.SignedDeviceList.decode(signed_list), AccountPublicKey(account_key))
    except CryptoError as exc:
        raise UntrustedDeviceListError(f"a stored device list no longer verifies: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Recipient:
    account_id: str
    device_id: str
    entry: dl.DeviceEntry


def fan_out(my_device_id: bytes, lists: Mapping[str, dl.DeviceList]) -> list[Recipient]:
    """Every device of every member's verified list except the sending device, sorted."""
    out = []
    for account_id, content in sorted(lists.items()):
        for entry in content.devices:
            if entry.device_id != my_device_id:
                out.append(Recipient(account_id, b64encode(entry.device_id), entry))
    return out


def versions(lists: Mapping[str, dl.DeviceList]) -> dict[str, int]:
    return {account_id: content.version for account_id, content in lists.items()}


def device_id_collisions(
    account_id: str, content: dl.DeviceList, others: Mapping[str, dl.DeviceList]
) -> list[tuple[str, str]]:
    """Rule 5: a device id names one device of one account. (device id, other account) for every
    device of ``content`` that another known account's verified list already names. A list with
    a collision is refused (the account that was known first keeps the device): otherwise a
    server could register a victim's device id under its own account and have its messages
    matched to the victim's sessions."""
    mine = {entry.device_id for entry in content.devices}
    out = []
    for other, listed in sorted(others.items()):
        if other == account_id:
            continue
        for entry in listed.devices:
            if entry.device_id in mine:
                out.append((b64encode(entry.device_id), other))
    return out


#: How long a verified device list is used without asking the server for a newer one (rule 7).
DEVICE_LIST_MAX_AGE_MS = 6 * 3600 * 1000


def refresh_due(verified_at_ms: int, now_ms: int, max_age_ms: int = DEVICE_LIST_MAX_AGE_MS) -> bool:
    """Rule 7: a contact's list is fetched again before sending once it was last verified more than
    ``max_age_ms`` ago (besides every 409/410 answer and every envelope from an unlisted device), so
    a removal the server withheld from one answer does not last. A clock that went backwards counts
    as due."""
    return now_ms - verified_at_ms >= max_age_ms or now_ms < verified_at_ms


def username_taken(username: str, account_id: str, pinned_account_id: str | None) -> bool:
    """Rule 6: a username names the account it was first seen with (pinned on first contact). A
    different account whose verified list claims the same username is an identity change the
    client refuses (event) rather than a new contact that would show under a known name."""
    return pinned_account_id is not None and pinned_account_id != account_id


def send_blocked(pending_key: bytes | None) -> bool:
    """Rule 3 on the sending side: while a contact has an identity change the user has not
    accepted (a new key held because the contact was verified, or under "block"), nothing is
    encrypted to the account: not to the old key's devices, not to the new ones."""
    return pending_key is not None


def identity_change(policy: str, *, own_account: bool, verified: bool) -> bool:
    """Rule 3's decision when a contact's account key changed: True adopts the new key (unverified,
    with an event), False holds it pending until the user verifies the contact (nothing is sent to
    the account meanwhile). Only the "warn" policy adopts, and never for a contact the user had
    verified (its safety number was compared: a silent swap is what verification exists to stop)
    nor for this device's own account (only the account's devices can change its key)."""
    return policy == "warn" and not own_account and not verified
