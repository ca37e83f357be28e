"""What a reaction may be (docs/protocol/sync.md § 5.4): exactly one emoji — one pictograph
with an optional presentation selector and skin-tone modifier, a keycap, a flag (two regional
indicators, or a black flag with tag characters), or a ZWJ sequence of those (one grapheme, such
as a family) — at most :data:`MAX_EMOJI_CODE_POINTS` code points. Pure and table-driven, so every
client agrees without Unicode databases of different versions."""

from __future__ import annotations

import re

from saltline.client_sdk.errors import UsageError

MAX_EMOJI_CODE_POINTS = 16
MAX_ZWJ_ELEMENTS = 4

_PICTO = (
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u231a\u231b\u2328\u23cf"
    "\u23e9-\u23f3\u23f8-\u23fa\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb-\u25fe\u2600-\u27bf"
    "\u2934\u2935\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55\u3030\u303d\u3297\u3299"
    "\U0001f000-\U0001f1e5\U0001f200-\U0001f3fa\U0001f400-\U0001faff"
)
_ELEMENT = (
    rf"(?:[{_PICTO}][\ufe0e\ufe0f]?[\U0001f3fb-\U0001f3ff]?"  # pictograph, presentation, skin tone
    r"(?:[\U000e0020-\U000e007e]{1,8}\U000e007f)?"  # tag sequence (subdivision flags)
    r"|[0-9#*]\ufe0f?\u20e3"  # keycap
    r"|[\U0001f1e6-\U0001f1ff]{2})"  # a flag: two regional indicators
)
_EMOJI = re.compile(rf"{_ELEMENT}(?:\u200d{_ELEMENT}){{0,{MAX_ZWJ_ELEMENTS - 1}}}")


def is_valid_emoji(text: object) -> bool:
    """Whether ``text`` is one emoji a reaction may carry."""
    return (
        isinstance(text, str)
        and 0 < len(text) <= MAX_EMOJI_CODE_POINTS
        and _EMOJI.fullmatch(text) is not None
    )


def emoji_problem(text: object) -> str | None:
    """Why ``text`` is not a valid reaction (None when it is)."""
    if not isinstance(text, str) or not text:
        return "a reaction is one emoji, not empty"
    if len(text) > MAX_EMOJI_CODE_POINTS:
        return f"a reaction is one emoji (at most {MAX_EMOJI_CODE_POINTS} code points)"
    if _EMOJI.fullmatch(text) is None:
        return f"a reaction is exactly one emoji: {text!r} is not"
    return None


def require_emoji(text: str) -> None:
    """:class:`UsageError` unless ``text`` is one emoji (what ``Client.react`` checks)."""
    problem = emoji_problem(text)
    if problem is not None:
        raise UsageError(problem)
