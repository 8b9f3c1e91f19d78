"""Bytes of a document a user sent, decoded by their real encoding.

A byte-order mark decides (UTF-8, UTF-16, UTF-32); without one, UTF-16 is recognised by its
NUL bytes beside every ASCII character (Windows' "Unicode" text files); anything else is read
as the knowledge base reads a file (bot.text.decoding): UTF-8, where a stray byte costs one
character, not the document, or Windows-1252 when the text is not UTF-8 at all.
NUL characters never survive: databases refuse them, and no reader needs them.
"""

from __future__ import annotations

from bot.text.decoding import decode_html, decode_text, has_byte_order_mark

_SAMPLE = 4096
# Fewer bytes than this say too little to tell UTF-16 from text with a stray NUL.
_MIN_UTF16_SAMPLE = 8


def decode_document(data: bytes, *, html: bool = False) -> str:
    """`html`: a page, whose `<meta charset>` counts when it is not UTF-8 (as in the
    knowledge base)."""
    return _decode(data, html).replace("\x00", "")


def _decode(data: bytes, html: bool) -> str:
    if has_byte_order_mark(data):
        return decode_text(data)
    sample = data[:_SAMPLE]
    if len(sample) >= _MIN_UTF16_SAMPLE and sample.count(0) > len(sample) // 4:
        high_first = sample[0::2].count(0) > sample[1::2].count(0)
        return data.decode("utf-16-be" if high_first else "utf-16-le", errors="replace")
    return decode_html(data) if html else decode_text(data)
