"""Bytes of a document a user sent, decoded by their real encoding.

A byte-order mark decides (UTF-8, UTF-16, UTF-32); without one, UTF-16 is recognised by its
NUL bytes beside every ASCII character (Windows' "Unicode" text files), then UTF-8 is tried,
then cp1252, which never fails, so a stray byte costs one odd character, not the document.
NUL characters never survive: databases refuse them, and no reader needs them.
"""

from __future__ import annotations

import codecs

# UTF-32's marks first: UTF-32-LE's begins with UTF-16-LE's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SAMPLE = 4096
# Fewer bytes than this say too little to tell UTF-16 from text with a stray NUL.
_MIN_UTF16_SAMPLE = 8


def decode_document(data: bytes) -> str:
    return _decode(data).replace("\x00", "")


def _decode(data: bytes) -> str:
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data.decode(codec, errors="replace")
    sample = data[:_SAMPLE]
    if len(sample) >= _MIN_UTF16_SAMPLE and sample.count(0) > len(sample) // 4:
        high_first = sample[0::2].count(0) > sample[1::2].count(0)
        return data.decode("utf-16-be" if high_first else "utf-16-le", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")
