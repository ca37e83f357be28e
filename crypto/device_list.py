"""Signed device lists: which devices belong to an account (docs/protocol/device-lists.md).

An account's Ed25519 account key signs the list of its devices. Versions only go up and
each list names the SHA-256 hash of its predecessor, so a server can neither add a device
nor roll the list back without every client noticing. Each device entry also carries a
*binding signature* made by the device's own signing key: the device consented to belong
to this account, so a holder of the account key cannot attach someone else's device keys.

Encodings (format 0x02; all integers big endian; ``||`` is concatenation)::

    device entry   = device_id (16) || signing_pk (32) || dh_pk (32) || added_at (u64)
                     || joined_version (u64) || binding_sig (64)                    160 bytes
    binding input  = signing_input(DEVICE_BINDING,
                         root_pk (32) || device_id (16) || signing_pk (32) || dh_pk (32)
                         || added_at (u64) || joined_version (u64))                 128 bytes
    device list    = format (u8, 0x02) || version (u64, >= 1) || previous_hash (32)
                     || root_pk (32) || account_pk (32) || username_len (u8, 3..32)
                     || username (ASCII) || device_count (u16, 1..MAX_DEVICES)
                     || entries sorted by device_id
                     || (0x00 | 0x01 || previous_pk (32) || succession_sig (64))
    succession sig = Ed25519(previous account key, signing_input(ACCOUNT_KEY_SUCCESSION,
                         previous_pk || account_pk || root_pk || version (u64) || previous_hash))
    signed list    = device list || signature (64)
                     signature = Ed25519(account key, signing_input(DEVICE_LIST, device list))
    list hash      = SHA-256(signed list)         (named as previous_hash by the next list)
    text form      = base64url, unpadded, of the signed list

``root_pk`` is the account key of version 1 (devices bind to it, so bindings survive a rotation);
``account_pk`` signs this version; the succession is present exactly when ``account_pk`` differs
from the predecessor's. A new entry joins at the list's own version; carried entries never change.
Keys are raw 32-byte keys (their role is fixed by their position). ``previous_hash`` is 32
zero bytes exactly when ``version == 1``. Device ids are unique and strictly ascending;
the username is in :func:`normalize_username` form (3..32 characters of ``[a-z0-9_.-]``, the
server's rule). A parser rejects anything else, including trailing bytes, so every list has
exactly one encoding.

The binding signature covers ``added_at`` too, so a holder of the account key cannot change
when a device says it joined. A device list never changes its username: a successor naming
another username than its predecessor is refused (:class:`UsernameMismatchError`), and
:func:`verify` / :class:`DeviceListChainVerifier` can pin the username the caller looked up.

Verification needs only public keys: :func:`verify` and :class:`DeviceListChainVerifier`
are what a server uses. The builders (:func:`first`, :func:`successor`, ...) take an
:class:`~saltline.crypto.keys.AccountKey`, and :func:`bind_device` a device's signing key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from saltline.crypto import primitives as p
from saltline.crypto.device_list_format import (
    DEVICE_ENTRY_SIZE,
    DEVICE_ID_SIZE,
    FORMAT_VERSION,
    HASH_SIZE,
    MAX_DEVICES,
    MAX_U64,
    MAX_USERNAME_BYTES,
    MIN_USERNAME_BYTES,
    SUCCESSION_SIZE,
    ZERO_HASH,
    DeviceEntry,
    DeviceList,
    SignedDeviceList,
    Succession,
    bind_device,
    binding_message,
    normalize_username,
    succession_message,
)
from saltline.crypto.errors import (
    BindingReplayError,
    ChainBreakError,
    DeviceListError,
    DeviceListSignatureError,
    EncodingError,
    ForkError,
    RollbackError,
    SignatureError,
    SuccessionError,
    UnknownSignerError,
    UsernameMismatchError,
)
from saltline.crypto.keys import AccountKey, AccountPublicKey, SigningContext

__all__ = [
    "DEVICE_ENTRY_SIZE",
    "DEVICE_ID_SIZE",
    "FORMAT_VERSION",
    "HASH_SIZE",
    "MAX_DEVICES",
    "MAX_U64",
    "MAX_USERNAME_BYTES",
    "MIN_USERNAME_BYTES",
    "SUCCESSION_SIZE",
    "ZERO_HASH",
    "DeviceEntry",
    "DeviceList",
    "DeviceListChainVerifier",
    "SignedDeviceList",
    "Succession",
    "bind_device",
    "binding_message",
    "check_successor",
    "first",
    "normalize_username",
    "sign",
    "succession_message",
    "successor",
    "verify",
    "with_device_added",
    "with_device_removed",
]


def sign(account_key: AccountKey, content: DeviceList) -> SignedDeviceList:
    """Sign ``content`` with the account key after checking that it names this key, that every
    device is bound to the account's root key and that a succession (if any) verifies."""
    if content.account_key != account_key.public_key:
        raise UnknownSignerError("the list names another account key than the signing key")
    content.verify_bindings()
    content.verify_succession()
    return SignedDeviceList(content, account_key.sign(SigningContext.DEVICE_LIST, content.encode()))


# -- verification (public keys only) -----------------------------------------------------------


def verify(
    signed: SignedDeviceList | bytes,
    trusted_account_key: AccountPublicKey,
    expected_username: str | None = None,
) -> DeviceList:
    """Verify one signed list under the account key the caller trusts; return its content.

    The list is trusted if it names ``trusted_account_key`` as its account key, or if it carries a
    succession from ``trusted_account_key`` to its account key (then the caller's trusted key
    moves on to the list's account key). With ``expected_username`` (normalised first), the list
    must name that username.

    Raises :class:`EncodingError` (bytes do not parse, or ``expected_username`` is not a valid
    username), :class:`UnknownSignerError` (the list names another account key, with no
    succession from the trusted one), :class:`DeviceListSignatureError` (the signature does not
    verify), :class:`SuccessionError` (a succession that does not verify),
    :class:`UnboundDeviceError` (a device did not sign its binding) or
    :class:`UsernameMismatchError` (the list names another username than ``expected_username``).
    """
    if not isinstance(trusted_account_key, AccountPublicKey):
        raise EncodingError("trusted_account_key must be an AccountPublicKey")
    expected = None if expected_username is None else normalize_username(expected_username)
    if not isinstance(signed, SignedDeviceList):
        signed = SignedDeviceList.decode(signed)
    content = signed.content
    succession = content.succession
    if content.account_key != trusted_account_key and (
        succession is None or succession.previous_key != trusted_account_key
    ):
        raise UnknownSignerError("device list is for another account key than the trusted one")
    try:
        content.account_key.verify(SigningContext.DEVICE_LIST, content.encode(), signed.signature)
    except SignatureError as exc:
        raise DeviceListSignatureError("device list signature does not verify") from exc
    content.verify_succession()
    content.verify_bindings()
    if expected is not None and content.username != expected:
        raise UsernameMismatchError("device list is for another username than the expected one")
    return content


def check_successor(
    known: SignedDeviceList | None, new: SignedDeviceList, retired: frozenset[bytes] = frozenset()
) -> bool:
    """The chain rule between the last verified list ``known`` and a signature-verified ``new``.

    Returns ``True`` if ``new`` advances the chain, ``False`` if it is ``known`` itself (same
    bytes: idempotent). Raises :class:`RollbackError` (older version), :class:`ForkError` (same
    version, other bytes), :class:`UsernameMismatchError` (``new`` names another username than
    ``known``), :class:`ChainBreakError` (a version skipped, the wrong predecessor hash, or
    another root key), :class:`SuccessionError` (the account key changed without a succession
    from ``known``'s key, or a succession names another previous key) or
    :class:`BindingReplayError` (a new entry that does not join at ``new``'s version, a carried
    entry that changed, or a device id in ``retired``: ids removed earlier in the chain).
    With no ``known`` list any version is accepted (first contact).
    """
    if known is None:
        return True
    if new.version < known.version:
        raise RollbackError(f"device list version {new.version} is older than known version {known.version}")
    if new.version == known.version:
        if p.constant_time_equal(new.encode(), known.encode()):
            return False
        raise ForkError(f"two different device lists claim version {new.version}")
    old, cur = known.content, new.content
    if cur.username != old.username:
        raise UsernameMismatchError("a device list cannot change the account's username")
    if new.version != known.version + 1:
        raise ChainBreakError(f"device list skips from version {known.version} to {new.version}")
    if not p.constant_time_equal(cur.previous_hash, known.hash()):
        raise ChainBreakError(f"device list version {new.version} does not name its predecessor's hash")
    if cur.root != old.root:
        raise ChainBreakError("a device list cannot change the account's root key")
    if cur.succession is None and cur.account_key != old.account_key:
        raise SuccessionError("the account key changed without a succession statement")
    if cur.succession is not None and cur.succession.previous_key != old.account_key:
        raise SuccessionError("the succession does not come from the previous list's account key")
    gone = retired | (set(old.device_ids) - set(cur.device_ids))
    for entry in cur.devices:
        before = old.device(entry.device_id)
        if before is None:
            if entry.device_id in gone:
                raise BindingReplayError(f"device {entry.device_id.hex()} was removed and cannot return")
            if entry.joined_version != new.version:
                raise BindingReplayError(
                    f"device {entry.device_id.hex()} does not join at version {new.version} "
                    "(a replayed binding)"
                )
        elif not p.constant_time_equal(before.encode(), entry.encode()):
            raise BindingReplayError(f"device {entry.device_id.hex()} changed its entry")
    return True


class DeviceListChainVerifier:
    """Tracks the last verified device list of one account and verifies what comes next.

    ``trusted_account_key`` is the key the caller already trusts for the account (from
    safety-number verification or first contact). ``last`` is the last list verified before
    (for example, from the client's store); it is re-verified here. ``expected_username``
    (optional) pins the username every list must name (the one the caller looked up); once a
    list is known, its successors must keep its username in any case
    (:class:`UsernameMismatchError`). ``retired`` are device ids the caller saw removed earlier
    in this chain (they can never return); the verifier adds those removed along the lists it
    verifies. After a verified succession the trusted account key is the new one.
    """

    __slots__ = ("_expected_username", "_last", "_retired", "_trusted")

    def __init__(
        self,
        trusted_account_key: AccountPublicKey,
        last: SignedDeviceList | None = None,
        expected_username: str | None = None,
        retired: Iterable[bytes] = (),
    ) -> None:
        if not isinstance(trusted_account_key, AccountPublicKey):
            raise EncodingError("trusted_account_key must be an AccountPublicKey")
        self._trusted = trusted_account_key
        self._expected_username = None if expected_username is None else normalize_username(expected_username)
        self._last: SignedDeviceList | None = None
        self._retired = frozenset(bytes(i) for i in retired)
        if last is not None:
            verify(last, trusted_account_key, self._expected_username)
            self._last = last
            self._trusted = last.content.account_key

    @property
    def trusted_account_key(self) -> AccountPublicKey:
        return self._trusted

    @property
    def retired(self) -> frozenset[bytes]:
        """Device ids removed along the chain this verifier saw (and those it was given)."""
        return self._retired

    @property
    def latest(self) -> SignedDeviceList | None:
        """The last verified signed list, or ``None`` before the first one."""
        return self._last

    @property
    def current(self) -> DeviceList | None:
        return None if self._last is None else self._last.content

    def verify_next(self, new: SignedDeviceList | bytes) -> DeviceList:
        """Verify ``new`` as the successor of the latest list (or as the first one) and adopt it.

        A list identical to the latest one is accepted again (idempotent). On any error the
        verifier's state is unchanged.
        """
        return self.verify_chain([new])

    def verify_chain(self, lists: Sequence[SignedDeviceList | bytes]) -> DeviceList:
        """Verify consecutive lists, oldest first, each the successor of the one before (the
        first one of the latest known list). All or nothing: the state changes only if every
        list verifies. Returns the content of the newest list."""
        if not lists:
            raise DeviceListError("no device list to verify")
        last = self._last
        trusted = self._trusted
        retired = self._retired
        for item in lists:
            signed = item if isinstance(item, SignedDeviceList) else SignedDeviceList.decode(item)
            _refuse_forked_succession(last, signed)
            verify(signed, trusted, self._expected_username)
            if check_successor(last, signed, retired):
                if last is not None:
                    retired = retired | (set(last.content.device_ids) - set(signed.content.device_ids))
                last = signed
                trusted = signed.content.account_key
        assert last is not None
        self._last = last
        self._trusted = trusted
        self._retired = retired
        return last.content


def _refuse_forked_succession(last: SignedDeviceList | None, new: SignedDeviceList) -> None:
    """``new`` and ``last`` are two different successions from the same outgoing key at the same
    version: the outgoing key signed both, so this is a fork (an alarm), even though the verifier
    already trusts ``last``'s new key and not ``new``'s."""
    if last is None or new.version != last.version or new.encode() == last.encode():
        return
    mine, theirs = last.content.succession, new.content.succession
    if mine is None or theirs is None or mine.previous_key != theirs.previous_key:
        return
    try:
        verify(new, mine.previous_key)
    except DeviceListError:
        return  # not signed by the outgoing key: proves nothing
    raise ForkError(f"two different account-key successions claim version {new.version}")


# -- builders (need the account key) ---------------------------------------------------------------


def first(account_key: AccountKey, username: str, devices: Iterable[DeviceEntry]) -> SignedDeviceList:
    """Version 1 of an account's device list (previous hash all zero; the account key is the
    chain's root key).

    Ed25519 signing is deterministic, so no randomness is needed.
    """
    content = DeviceList.create(1, ZERO_HASH, account_key.public_key, username, devices)
    return sign(account_key, content)


def successor(
    previous: SignedDeviceList,
    account_key: AccountKey,
    devices: Iterable[DeviceEntry],
    *,
    rotate_to: AccountKey | None = None,
) -> SignedDeviceList:
    """The next version after ``previous`` (which is verified first under ``account_key``), with
    ``devices`` and the same username and root. With ``rotate_to``, ``account_key`` signs a
    succession to ``rotate_to``, which signs the new list."""
    verify(previous, account_key.public_key)
    if previous.version >= MAX_U64:
        raise EncodingError("device list version space exhausted")
    version = previous.version + 1
    root = previous.content.root
    signer = account_key
    succession = None
    if rotate_to is not None:
        if rotate_to.public_key == account_key.public_key:
            raise EncodingError("rotate_to must be a new account key")
        message = succession_message(
            account_key.public_key, rotate_to.public_key, root, version, previous.hash()
        )
        succession = Succession(
            account_key.public_key, account_key.sign(SigningContext.ACCOUNT_KEY_SUCCESSION, message)
        )
        signer = rotate_to
    content = DeviceList.create(
        version,
        previous.hash(),
        signer.public_key,
        previous.content.username,
        devices,
        root,
        succession,
    )
    signed = sign(signer, content)
    check_successor(previous, signed)
    return signed


def with_device_added(
    previous: SignedDeviceList, account_key: AccountKey, entry: DeviceEntry
) -> SignedDeviceList:
    """``previous`` plus ``entry`` (which must join at ``previous.version + 1``); raises
    :class:`EncodingError` if the device id is already listed."""
    if previous.content.device(entry.device_id) is not None:
        raise EncodingError(f"device {entry.device_id.hex()} is already in the list")
    return successor(previous, account_key, (*previous.content.devices, entry))


def with_device_removed(
    previous: SignedDeviceList,
    account_key: AccountKey,
    device_id: bytes,
    *,
    rotate_to: AccountKey | None = None,
) -> SignedDeviceList:
    """``previous`` without ``device_id`` (optionally rotating the account key to ``rotate_to``);
    raises :class:`EncodingError` if it is not listed, or if it is the last device."""
    if previous.content.device(device_id) is None:
        raise EncodingError(f"device {bytes(device_id).hex()} is not in the list")
    remaining = tuple(d for d in previous.content.devices if d.device_id != device_id)
    return successor(previous, account_key, remaining, rotate_to=rotate_to)
