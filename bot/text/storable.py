"""Text every database Parley supports accepts, made so where text enters storage.

PostgreSQL refuses the NUL character in text columns ("invalid byte sequence for encoding
UTF8: 0x00"), and a lone UTF-16 surrogate (U+D800..U+DFFF, which a JSON body can carry as
`\\ud800`) cannot be encoded as UTF-8 at all, by any driver. Either one made a whole write fail,
again at every retry: a reply with a NUL was shown but never recorded (so re-answered at every
start), and a user message with one failed every re-delivery of its webhook.

`storable` replaces each NUL and each lone surrogate with U+FFFD, the replacement character:
the text keeps its length and shows where something was, and nothing else changes (a valid
surrogate pair never reaches Python as two code points, so only broken ones are touched).
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD; unchanged if it has neither."""
    return _UNSTORABLE.sub(REPLACEMENT, text)
