"""The one rule for identifiers, applied wherever an id enters estop: a launch, a stop, a
relaunch, an HTTP path or body, a record on any topic.

An id (campaign, message, command) is 1 to ``ID_MAX`` characters of ``A-Z a-z 0-9 . _ : -``. The
set is ASCII, which Unicode normalisation (NFC) leaves as it is, so an id has exactly one
spelling: no space, no-break space, look-alike letter (the Kelvin sign NFC turns into ``K``) or
control character can make two ids that print alike but match differently. An id that breaks the
rule is refused with one line naming what is wrong, never rewritten (stripped, normalised): a stop
halts exactly the campaign it names. A message id embeds its campaign's id (the launcher's
``campaign:channel:index``), so it may be ``MESSAGE_ID_MAX`` long."""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

from streams.models.exceptions import InvalidIdError

ID_MAX: Final = 128
MESSAGE_ID_MAX: Final = ID_MAX + 64
ALLOWED: Final = "A-Z a-z 0-9 . _ : -"
ID_BYTES = (string.ascii_letters + string.digits + "._:-").encode()  # the allowed bytes
_SHOWN = 40  # characters of a bad id quoted in an error


def id_problem(value: object, what: str = "campaign id", limit: int = ID_MAX) -> str | None:
    """Why ``value`` is not a valid id (one line, naming ``what``), or None when it is one."""
    if not isinstance(value, str | bytes):
        return f"{what} must be a string"
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    if is_valid_id(raw, limit):
        return None
    text = raw.decode("utf-8", "replace")
    shown = repr(text[:_SHOWN]) + ("..." if len(text) > _SHOWN else "")
    if not text:
        why = "it is empty"
    elif len(raw) > limit:
        why = f"it is {len(raw):,} characters long, at most {limit} are allowed"
    else:
        index, char = next((i, c) for i, c in enumerate(text)
                           if not c.isascii() or c.encode().translate(None, ID_BYTES))
        name = unicodedata.name(char, "(a control character)")
        why = f"character {index + 1} is U+{ord(char):04X} {name}"
    return f"invalid {what} {shown}: {why} (an id is 1 to {limit} of {ALLOWED})"


def is_valid_id(raw: bytes, limit: int = ID_MAX) -> bool:
    """``id_problem(raw) is None`` for the hot path (a record's key or header, as bytes): every
    byte deleted by the allowed ones leaves nothing (one C call, no regular expression)."""
    return 0 < len(raw) <= limit and not raw.translate(None, ID_BYTES)


def check_id(value: str, what: str = "campaign id", limit: int = ID_MAX) -> str:
    """``value`` itself when it is a valid id; raises InvalidIdError naming what is wrong."""
    problem = id_problem(value, what, limit)
    if problem is not None:
        raise InvalidIdError(problem)
    return value


# The ids a send request carries, with the limit of each. A recipient id is an address (an
# email address, a phone number, a subscription's name), not an id of ours: only its size is
# bounded.
REQUEST_IDS: Final = (("message_id", MESSAGE_ID_MAX), ("campaign_id", ID_MAX))
RECIPIENT_MAX: Final = 320


def request_problem(request: Mapping[str, Any]) -> str | None:
    """Why a decoded send request's ids are not valid (its recipient must be present), or None."""
    for name in ("message_id", "campaign_id", "recipient_id"):
        if not request[name]:
            return f"invalid SendRequest: empty {name}"
    for name, limit in REQUEST_IDS:
        problem = id_problem(request[name], name.replace("_", " "), limit)
        if problem is not None:
            return f"invalid SendRequest: {problem}"
    if len(request["recipient_id"]) > RECIPIENT_MAX:
        return (f"invalid SendRequest: recipient_id of {len(request['recipient_id']):,} "
                f"characters (at most {RECIPIENT_MAX} allowed)")
    return None
