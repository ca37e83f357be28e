"""Events the client emits (frozen, slotted; h11 style). Ids are base64url text.

A message is named by its ``message_ref`` (``"<device id>.<n>"``, the reference that ``reply``,
``edit``, ``delete`` and ``react`` take) in every event; ``envelope_id`` is the transport's id of
the envelope that carried it (outbox, acknowledgements). Events that name accounts carry their
usernames too (``""`` for an account this device knows no username of)."""

from __future__ import annotations

from dataclasses import dataclass, field

from saltline.client_sdk.core.attachments import AttachmentPointer


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every event."""


@dataclass(frozen=True, slots=True)
class Reaction:
    """One account's reaction to a message."""

    account_id: str
    username: str
    emoji: str


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A text message, stored durably before this event is emitted. ``sent_by_me`` is true for
    messages sent by another device of this account (and for this device's own sends).
    ``message_ref`` names it for ``reply``/``edit``/``delete``/``react``; ``reply_to`` is the
    ``message_ref`` of the message it answers."""

    conversation_id: str
    message_ref: str
    sender_account_id: str
    sender_device_id: str
    sender_username: str
    text: str
    envelope_id: str
    server_seq: int
    sent_at_ms: int
    sent_by_me: bool
    #: A file sent with the message (``text`` is its caption); ``Client.download`` fetches it.
    #: A client with ``auto_download_bytes`` at least its ``size`` fetches it by itself; an
    #: :class:`AttachmentDownloaded` (or :class:`AttachmentDownloadFailed`) follows.
    attachment: AttachmentPointer | None = None
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class MessageSent(Event):
    """The server stored an operation this device sent (from the outbox): a message (then
    ``message_ref`` names it) or an edit, deletion, reaction, read marker... (``message_ref``
    names that operation)."""

    conversation_id: str
    message_ref: str
    envelope_id: str
    server_seq: int


@dataclass(frozen=True, slots=True)
class DeviceListChanged(Event):
    """A newer device list of an account verified (devices added or removed)."""

    account_id: str
    username: str
    version: int
    added: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IdentityChanged(Event):
    """A contact's account key changed. ``blocked`` False: the new key was adopted (policy "warn",
    contact not verified); True: nothing is sent to the contact until ``verify_contact`` (policy
    "block", or a verified contact: its safety number must be compared again).

    Also emitted (``blocked`` True, ``pinned_account_id`` set) when a *different account* presents
    a username this device already pinned to ``pinned_account_id``: that account is refused (its
    messages are dropped, nothing is encrypted to it) and the username keeps naming the pinned one.
    """

    account_id: str
    username: str
    policy: str
    blocked: bool
    pinned_account_id: str | None = None


@dataclass(frozen=True, slots=True)
class UntrustedDeviceList(Event):
    """The server presented a device list that did not verify; it was refused."""

    account_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class DeliveryGap(Event):
    """The server's retention dropped queue entries ``from_queue_seq..to_queue_seq`` before this
    device received them."""

    from_queue_seq: int
    to_queue_seq: int


@dataclass(frozen=True, slots=True)
class DecryptionFailed(Event):
    """An envelope was dropped (acknowledged, never processed): it could not be decrypted or
    parsed, its sender is in no verified device list, or it kept failing. ``code`` is one of
    :data:`saltline.client_sdk.core.inbound.DropCode`. ``"malformed"`` for a stored envelope that
    decrypted but whose operation does not decode: it is kept as a void (no effect, but it consumes
    its dot and server_seq, so the sender's later operations still apply; sync.md § 2.2), and
    reported once, on arrival. An envelope that decrypted and was dropped is reported once too:
    its message key is spent, so a replay or gap fill of it is a duplicate (delivery.md § 5.9)."""

    conversation_id: str
    envelope_id: str
    sender_device_id: str
    reason: str
    code: str = "undecryptable"


@dataclass(frozen=True, slots=True)
class ConversationUnavailable(Event):
    """The server no longer shows a conversation to this device (403/404: for example it was
    removed from a group while offline); envelopes of it were acknowledged and dropped."""

    conversation_id: str
    status: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class MalformedFrame(Event):
    """The server sent a frame that breaks the protocol; it was ignored (and acknowledged when it
    named a queue position). A client that keeps getting these is talking to a broken or hostile
    server."""

    frame_type: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class OutboxItemFailed(Event):
    """The server refused an outbox item for good (``status`` 413, 403, 404, 422...): it stays in
    the outbox as failed, never blocks the items behind it; ``retry_outbox`` or ``discard_outbox``."""

    conversation_id: str
    envelope_id: str
    reason: str
    status: int | None
    code: str | None
    message_ref: str | None = None


@dataclass(frozen=True, slots=True)
class ConversationAdded(Event):
    conversation_id: str
    members: tuple[str, ...]
    usernames: dict[str, str] = field(default_factory=dict)  # account id -> username


@dataclass(frozen=True, slots=True)
class MarkedRead(Event):
    conversation_id: str
    up_to_server_seq: int


@dataclass(frozen=True, slots=True)
class Connected(Event):
    """The delivery socket is up; ``acked_queue_seq`` is where the server resumes."""

    acked_queue_seq: int


@dataclass(frozen=True, slots=True)
class Drained(Event):
    """Everything queued for this device so far was received and stored."""

    queue_seq: int


@dataclass(frozen=True, slots=True)
class Disconnected(Event):
    """The delivery socket closed or could not connect. ``code``: the server's close code (None:
    a network failure or a dead connection); ``attempt``: consecutive failures (1 after a healthy
    connection); ``retry_in_s``: when the next attempt starts (None: no retry, see
    :class:`DeviceRemoved`)."""

    reason: str
    code: int | None = None
    attempt: int = 1
    retry_in_s: float | None = None


@dataclass(frozen=True, slots=True)
class Reconnected(Event):
    """The delivery socket is ready again after a disconnection (``attempts``: how many tries it
    took); the server resumes after ``acked_queue_seq``."""

    acked_queue_seq: int
    attempts: int


@dataclass(frozen=True, slots=True)
class DeviceRemoved(Event):
    """The server closed the delivery socket because this device was removed from its account
    (close code 4002). The client stops reconnecting; the device must be linked again."""

    reason: str


@dataclass(frozen=True, slots=True)
class OwnDeviceLinked(Event):
    """A device joined this account (seen on every device of the account, so a takeover that adds
    a device is visible on the owner's other devices). ``name`` is the name the new device
    chose (end-to-end encrypted), or ``"(unnamed device)"``."""

    device_id: str
    name: str
    version: int


@dataclass(frozen=True, slots=True)
class OwnDeviceUnlinked(Event):
    """A device left this account (removed by a device of the account, or by itself)."""

    device_id: str
    name: str
    version: int


@dataclass(frozen=True, slots=True)
class AccountKeyRotated(Event):
    """A contact's (or this account's) account key moved on to a successor its previous key
    signed (device-lists.md § 3.4). Not an identity change: the contact keeps its verified state
    (``verified``) and trust policy; the safety number changes with the key."""

    account_id: str
    username: str
    version: int
    verified: bool


@dataclass(frozen=True, slots=True)
class AccountKeyUnavailable(Event):
    """This account's key rotated but this device did not receive the new key (no valid handoff):
    it still sends and receives, but cannot manage devices until it is linked again."""

    version: int
    reason: str


@dataclass(frozen=True, slots=True)
class HistoryDownloadFailed(Event):
    """A newly linked device could not download or open its history bundle. The device is already
    reachable; ``retrying`` says whether another attempt follows (``attempt`` of ``of``)."""

    attempt: int
    of: int
    reason: str
    retrying: bool


# -- conversation sync (docs/protocol/sync.md); ``message_ref`` is ``"<device id>.<n>"`` --------


@dataclass(frozen=True, slots=True)
class MessageEdited(Event):
    conversation_id: str
    message_ref: str
    text: str | None


@dataclass(frozen=True, slots=True)
class MessageDeleted(Event):
    conversation_id: str
    message_ref: str


@dataclass(frozen=True, slots=True)
class MessageExpired(Event):
    """A disappearing message reached its expiry (sync.md § 5.8): its text, its edits and the
    reactions to it are gone from this device's store (published after the purge committed).
    ``envelope_id``: the envelope it arrived in."""

    conversation_id: str
    message_ref: str
    envelope_id: str


@dataclass(frozen=True, slots=True)
class ReactionChanged(Event):
    """The reactions to a message now (every account's, sorted by account id)."""

    conversation_id: str
    message_ref: str
    reactions: tuple[Reaction, ...]


@dataclass(frozen=True, slots=True)
class ReadStateChanged(Event):
    """A read marker moved (on this account's devices: the unread count changed too)."""

    conversation_id: str
    read_up_to: dict[str, int]  # account id -> server_seq
    unread: int
    usernames: dict[str, str] = field(default_factory=dict)  # account id -> username


@dataclass(frozen=True, slots=True)
class SettingsChanged(Event):
    """``conflicts``: the concurrent values that lost (newest first)."""

    conversation_id: str
    field: str
    value: str | bool | int | None
    conflicts: tuple[str | bool | int | None, ...]


@dataclass(frozen=True, slots=True)
class ForkDetected(Event):
    """The server showed this device a different history of the conversation than another member
    device saw (docs/protocol/sync.md § 9): an operation's transcript hash disagrees with this
    device's log, or one ``server_seq`` was given to two envelopes. Devices may now show different
    orders or miss operations; compare safety numbers and treat the server as hostile.
    ``message_ref``: the operation that revealed it (None when the envelope was refused)."""

    conversation_id: str
    reason: str
    server_seq: int
    sender_account_id: str
    message_ref: str | None


@dataclass(frozen=True, slots=True)
class HistoryGap(Event):
    """Operations of the conversation are missing and the server did not supply them when asked:
    ``missing`` server_seqs were never received, ``held`` operations (message refs) wait for
    predecessors. The view does not include the held operations until the gap is filled."""

    conversation_id: str
    missing: tuple[int, ...]
    held: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MembershipMismatch(Event):
    """The server's member list of a conversation differs from the one this device holds for it
    (``members``); fan-out goes to ``members`` only. For a direct conversation the two accounts
    are pinned when it is created or first seen and never change: ``server_members`` is what the
    server claimed instead (a ghost member it added, or a member it hid)."""

    conversation_id: str
    members: tuple[str, ...]
    server_members: tuple[str, ...]
    usernames: dict[str, str] = field(default_factory=dict)  # account id -> username


@dataclass(frozen=True, slots=True)
class AddedToConversation(Event):
    """This account was added to a group it had no history of: the membership it starts from is
    the one ``added_by`` (an admin, by that account's word) vouched for in its add's welcome
    (docs/protocol/sync.md § 5.7). Show who added you: a stranger here is a warning sign."""

    conversation_id: str
    added_by: str
    members: tuple[str, ...]
    usernames: dict[str, str] = field(default_factory=dict)  # account id -> username (added_by too)


@dataclass(frozen=True, slots=True)
class OperationRejected(Event):
    """An operation of a conversation has no effect on any device: its author was not allowed to
    make it in the membership its causal past shows (docs/protocol/sync.md § 5.7). ``reason``:
    ``not_a_member`` (the account was not a member then: a ghost account the server routes, or a
    removed member), ``not_an_admin`` (a membership change by a member who is not an admin),
    ``direct_members_fixed``, ``no_genesis`` (the conversation has no authenticated start before
    it), ``bad_genesis``, or ``invalid_reaction`` (a reaction that is not exactly one emoji: never
    shown). A rejected message is not stored; ``envelope_id`` names it."""

    conversation_id: str
    account_id: str
    device_id: str
    message_ref: str
    envelope_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class MembershipChanged(Event):
    conversation_id: str
    members: tuple[str, ...]
    usernames: dict[str, str] = field(default_factory=dict)  # account id -> username


@dataclass(frozen=True, slots=True)
class TypingChanged(Event):
    """Another device is typing (ephemeral: only delivered to online devices)."""

    conversation_id: str
    account_id: str
    device_id: str
    typing: bool
    username: str = ""


@dataclass(frozen=True, slots=True)
class AttachmentDownloaded(Event):
    """An attachment the client fetched by itself (``auto_download_bytes``) is complete and
    verified at ``path``."""

    conversation_id: str
    envelope_id: str
    path: str
    message_ref: str = ""


@dataclass(frozen=True, slots=True)
class AttachmentDownloadFailed(Event):
    """An automatic download failed (``reason``: the error's message); ``Client.download`` may
    be called again (it resumes)."""

    conversation_id: str
    envelope_id: str
    reason: str
    message_ref: str = ""
