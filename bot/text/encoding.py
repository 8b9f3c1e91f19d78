"""Bytes of a document a user sent, decoded by their real encoding.

A byte-order mark decides (UTF-8, UTF-16, UTF-32); without one, UTF-16 is recognised by its
NUL bytes beside every ASCII character (Windows' "Unicode" text files); anything else is read
as the knowledge base reads a file (bot.text.decoding): UTF-8, where a stray byte costs one
character, not the document, or Windows-1252 when the text is not UTF-8 at all.
NUL characters never survive: databases refuse them, and no reader needs them. NUL bytes
near the start in neither layout, in bytes that are not mostly UTF-8, are a binary file (an
archive or an image named notes.txt): `is_binary`, refused rather than read as noise. So is
a file that begins with a byte-order mark its bytes do not bear out, where no text could
begin with those bytes (see `_false_mark`).
"""

from __future__ import annotations

import codecs
import re

from bot.text.decoding import decode_html, decode_text, has_byte_order_mark, is_mostly_utf8

_SAMPLE = 4096
# Fewer bytes than this say too little to tell UTF-16 from text with a stray NUL.
_MIN_UTF16_SAMPLE = 8
# UTF-16's marks begin UTF-32-LE's.
_UTF16_AND_32_MARKS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_BE)
# Control bytes text has: tab, line feed, form feed, carriage return, escape.
_TEXT_CONTROLS = frozenset(b"\t\n\f\r\x1b")
# The other control characters, DEL included (C1 and private use are text to someone), but
# vertical tab (a line break within a paragraph: PowerPoint's, Word's).
_OTHER_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
# nroff's bold and underline (a man page formatted as text, BSD's cat pages): a character,
# a backspace, the character printed over it. Counted as the one character (as `col -b`).
_OVERSTRUCK = re.compile(r"[^\x00-\x1f\x7f]\x08(?=[^\x00-\x1f\x7f])")
# DOS's end-of-file mark, and CP/M's padding of a text to its last 128-byte record.
_END_OF_FILE = "\x1a"


def is_binary(data: bytes) -> bool:
    """NUL bytes near the start, with no byte-order mark, not laid out as UTF-16 text, in
    bytes that are not mostly UTF-8 (git's test, UTF-16 aside), and more than one byte in
    20 a control character: an archive, an image. A Windows-1252 text with a stray NUL is
    text (refused as binary before a helper's review). A false byte-order mark is binary
    whatever follows it (`_false_mark`)."""
    sample = data[:_SAMPLE]
    marked = sample.startswith(_UTF16_AND_32_MARKS)
    if (not marked and b"\x00" not in sample) or has_byte_order_mark(data):
        return False
    if marked and _false_mark(sample):
        return True
    if b"\x00" not in sample:
        return False
    if utf16_layout(sample) is not None or is_mostly_utf8(sample, final=False):
        return False
    controls = sum(1 for byte in sample if byte < 32 and byte not in _TEXT_CONTROLS)
    return controls * 20 > len(sample)


def _false_mark(sample: bytes) -> bool:
    """Whether the UTF-32 or UTF-16 byte-order mark the sample begins with, which its bytes
    do not bear out (has_byte_order_mark said so: they are no text in that encoding), begins
    no text read otherwise either. Read by the other rules, such a file reached the
    model as noise: code units past U+10FFFF as UTF-16 letters beside Latin-1 ones, lone
    surrogates or C1 controls as Windows-1252 letters or as UTF-16 again.

    - UTF-32's marks: FF FE 00 00 and 00 00 FE FF begin no text (nor does UTF-16's mark
      before a NUL).
    - UTF-16's, before bytes laid out as UTF-16 (the NUL guess would read them as what the
      mark just found no text), or before bytes neither mostly UTF-8 nor half ASCII: a
      Windows-1252 or damaged UTF-8 text that begins with "ÿþ" is mostly ASCII after it, as
      all Western text is; lone surrogates and random bytes are not."""
    if sample.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return True
    rest = sample[len(codecs.BOM_UTF16_LE) :]
    if utf16_layout(rest) is not None:
        return True
    non_ascii = len(rest) - len(rest.translate(None, delete=bytes(range(128, 256))))
    return non_ascii * 2 > len(rest) and not is_mostly_utf8(rest, final=False)


def mostly_controls(text: str) -> bool:
    """More than one character in 20 a control character that text does not have (`is_binary`'s
    rule, for text already decoded): a file of control bytes with no NUL among them is no
    text either, and would reach the model and the sources list as such. Text's own uses of
    control characters are not counted: overstrike (a formatted man page), Ctrl-Z at the end
    (a DOS or CP/M file), vertical tabs (a slide's line breaks)."""
    body = text.rstrip(_END_OF_FILE)
    if text and not body:
        return True  # end-of-file marks alone
    body = _OVERSTRUCK.sub("", body)
    return _OTHER_CONTROLS.subn("", body)[1] * 20 > len(body)  # counted in C: a file can be 50 MB


def utf16_layout(sample: bytes) -> str | None:
    """ "utf-16-le" or "-be" when the sample's NUL bytes are those of UTF-16 text: a quarter
    of its bytes or more, nearly all on one side of each pair (the high byte of an ASCII or
    Latin-1 character), and no more than one character in 20 a control one; None otherwise.
    An archive's or image's NULs fall on both sides; a table of 16-bit numbers (a sound, a
    bitmap) has them on one side too, but beside control bytes, not letters."""
    if len(sample) < _MIN_UTF16_SAMPLE or sample.count(0) <= len(sample) // 4:
        return None
    high, low = sample[0::2].count(0), sample[1::2].count(0)
    if min(high, low) * 10 > max(high, low):
        return None
    layout = "utf-16-be" if high > low else "utf-16-le"
    units = len(sample) // 2
    first, second = (sample[0::2], sample[1::2]) if high > low else (sample[1::2], sample[0::2])
    controls = sum(
        1
        for upper, lower in zip(first[:units], second[:units], strict=True)
        if upper == 0 and lower < 32 and lower not in _TEXT_CONTROLS
    )
    return None if controls * 20 > units else layout


def decode_document(data: bytes, *, html: bool = False) -> str:
    """`html`: a page, whose `<meta charset>` counts when it is not UTF-8 (as in the
    knowledge base)."""
    return _decode(data, html).replace("\x00", "")


def _decode(data: bytes, html: bool) -> str:
    if has_byte_order_mark(data):
        return decode_text(data)
    layout = utf16_layout(data[:_SAMPLE])
    if layout is not None:
        return data.decode(layout, errors="replace")
    return decode_html(data) if html else decode_text(data)
