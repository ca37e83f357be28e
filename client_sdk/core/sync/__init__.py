"""Multi-device conversation sync, sans-I/O (docs/protocol/sync.md).

* :mod:`.ops` - operations and their canonical JSON plaintext.
* :mod:`.clock` - dots, full and compact vector clocks, pruning.
* :mod:`.rules` - the conflict-resolution registers.
* :mod:`.membership` - the authenticated membership and who may do what.
* :mod:`.state` - the materialised conversation state (reducer); :mod:`.server_order` - the server
  order it received (prefix clocks, transcript hashes); :mod:`.holding` - the operations it holds for
  their causal predecessors; :mod:`.composer` - the :class:`Composer`; :mod:`.transcript` - the
  transcript hash; :mod:`.view` - what the reducer reports.
"""

from saltline.client_sdk.core.sync.clock import CompactClock, Dot, Order, compare, concurrent, contains, merge
from saltline.client_sdk.core.sync.composer import Composer
from saltline.client_sdk.core.sync.errors import SyncError, SyncFormatError, SyncProtocolError
from saltline.client_sdk.core.sync.membership import Roles
from saltline.client_sdk.core.sync.ops import (
    Delete,
    Edit,
    Genesis,
    MembershipChange,
    Message,
    Op,
    ReactionAdd,
    ReactionRemove,
    ReadMarker,
    SettingsChange,
    Typing,
    Undecryptable,
    Unknown,
    Void,
    attested_clock,
    decode,
    decode_or_void,
    decode_stored,
    encode,
    undecryptable,
)
from saltline.client_sdk.core.sync.state import (
    MAX_CLAIMS,
    ConversationState,
    ConversationView,
    FieldState,
    GapFill,
    MessageView,
    Received,
    Rejection,
    TypingEvent,
)

__all__ = [
    "MAX_CLAIMS",
    "CompactClock",
    "Composer",
    "ConversationState",
    "ConversationView",
    "Delete",
    "Dot",
    "Edit",
    "FieldState",
    "GapFill",
    "Genesis",
    "MembershipChange",
    "Message",
    "MessageView",
    "Op",
    "Order",
    "ReactionAdd",
    "ReactionRemove",
    "ReadMarker",
    "Received",
    "Rejection",
    "Roles",
    "SettingsChange",
    "SyncError",
    "SyncFormatError",
    "SyncProtocolError",
    "Typing",
    "TypingEvent",
    "Undecryptable",
    "Unknown",
    "Void",
    "attested_clock",
    "compare",
    "concurrent",
    "contains",
    "decode",
    "decode_or_void",
    "decode_stored",
    "encode",
    "merge",
    "undecryptable",
]
