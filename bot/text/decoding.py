"""A document file's bytes to text, by the encoding the file is really in.

- A byte-order mark decides (UTF-8, UTF-16 or UTF-32, the mark removed) when the bytes after
  it are text in that encoding: at most one character in 20 a control or private-use
  character, or a unit that is none (a lone surrogate or a cut last unit in UTF-16, a value
  past U+10FFFF in UTF-32, each read as U+FFFD: a damaged unit costs one character, as a
  stray byte does in UTF-8), and for UTF-16 at least one ASCII character (a line break, a
  space, a digit). Bytes FF FE
  also begin Windows-1252 and broken UTF-8 files ("\xff\xfe\xfa\x80 text..."), which read as
  UTF-16 give a line of CJK characters without one ASCII character (that would need a NUL
  byte); such a file is read by the rules below, the first bytes included.
- Else UTF-8 when the bytes are UTF-8, and also when at least half of the non-ASCII bytes
  form valid UTF-8 characters: a UTF-8 file with a few stray bytes (a Windows-1252 word
  pasted in, a damaged byte) stays UTF-8, and each byte that is not UTF-8 becomes its
  Windows-1252 character (U+FFFD for the five bytes Windows-1252 leaves undefined). A stray
  byte costs one character; the file's other characters are read right.
- Else (most non-ASCII bytes invalid as UTF-8: Latin-1 or Windows-1252 text) Windows-1252.
- HTML only: a page that is not UTF-8 and names another legacy encoding in a `<meta>` tag in
  its first 1024 bytes (`<meta charset="koi8-r">`, Shift_JIS, GBK...) is read in that encoding.
  Latin-1 and Windows-1252 are already the rule above.
"""

from __future__ import annotations

import codecs
import re

# UTF-32's marks first: UTF-32-LE's begins with UTF-16-LE's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# The HTML standard's prescan looks at the first 1024 bytes for a declaration.
_HTML_PRESCAN_BYTES = 1024
_META_CHARSET = re.compile(rb"<meta\b[^>]*?\bcharset\s*=\s*[\"']?\s*([A-Za-z0-9._:-]+)", re.I)
# Legacy encodings of the HTML standard other than Windows-1252 (Python's names); a page
# that names another one (UTF-7, "unicode_escape"...) is read by the rule for any text.
_HTML_LEGACY = frozenset(
    {"cp866", "koi8-r", "koi8-u", "mac-roman", "mac-cyrillic", "tis-620", "cp874"}
    | {f"iso8859-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16)}
    | {f"cp125{n}" for n in (0, 1, 3, 4, 5, 6, 7, 8)}
    | {"gbk", "gb2312", "gb18030", "big5", "big5hkscs", "cp950", "euc_jp", "iso2022_jp"}
    | {"shift_jis", "cp932", "euc_kr", "cp949"}
)


# Characters no text is made of: C0 and C1 controls (tab, line breaks and form feed aside),
# lone surrogates, private use, the noncharacters U+FFFE and U+FFFF.
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff\ufffe\uffff]")
_ASCII = re.compile(r"[\t\n\r\x20-\x7e]")
_REPLACEMENT = "\ufffd"
# At most one character in this many may be one of _NOT_TEXT in a file read by its mark.
_TEXT_RATIO = 20


def decode_text(data: bytes) -> str:
    """`data` as text, by the rules in this module's docstring (HTML's `<meta>` aside)."""
    marked = _by_byte_order_mark(data)
    return _unmarked(data) if marked is None else marked


def _by_byte_order_mark(data: bytes) -> str | None:
    """The text after a byte-order mark the bytes bear out; None without one. The first
    mark that begins them decides: bytes FF FE 00 00 that are no UTF-32 text are not taken
    for a UTF-16 text that begins with a NUL, which no text does (they read as such 4,000
    Latin letters that were UTF-32 code units past U+10FFFF)."""
    for bom, codec in _BOMS:
        if not data.startswith(bom):
            continue
        if codec == "utf-8":  # the mark is valid UTF-8 itself: the rest is read by the rules
            return _unmarked(data[len(bom) :])
        text, damaged = _by_codec(data, codec)
        if _looks_like_text(text, ascii_needed=codec == "utf-16", damaged=damaged):
            return text
        return None
    return None


def _by_codec(data: bytes, codec: str) -> tuple[str, bool]:
    """`data` in `codec` (its mark removed), and whether some of its units are none in it
    (an odd length or a lone surrogate in UTF-16, a value over U+10FFFF in UTF-32), each
    read as U+FFFD."""
    try:
        return data.decode(codec), False
    except UnicodeDecodeError:
        return data.decode(codec, errors="replace"), True


def _looks_like_text(text: str, *, ascii_needed: bool, damaged: bool) -> bool:
    """Counted by regular expressions, in C: a file can be 50 MB. `damaged`: the U+FFFD
    characters are units that were none in the encoding, and count as such."""
    if not text:
        return True
    if ascii_needed and _ASCII.search(text) is None:
        return False
    odd = len(text) - len(_NOT_TEXT.sub("", text))
    if damaged:
        odd += text.count(_REPLACEMENT)
    return odd * _TEXT_RATIO <= len(text)


def _unmarked(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if is_mostly_utf8(data):
        return _lenient_utf8(data)
    return data.decode("cp1252", errors="replace")


def decode_html(data: bytes) -> str:
    """A page's text: as decode_text, except that a page that is not UTF-8 and declares
    another legacy encoding in a `<meta>` tag is read in it."""
    if not has_byte_order_mark(data):
        codec = _declared_legacy_encoding(data[:_HTML_PRESCAN_BYTES])
        if codec is not None and not is_mostly_utf8(data):
            return data.decode(codec, errors="replace")
    return decode_text(data)


def has_byte_order_mark(data: bytes) -> bool:
    """Whether `data` begins with a byte-order mark that its bytes bear out (see
    decode_text): a mark that does not is only the first bytes of the text."""
    return _by_byte_order_mark(data) is not None


def is_mostly_utf8(data: bytes, *, final: bool = True) -> bool:
    """Whether decode_text reads `data` (no byte-order mark) as UTF-8. With final=False,
    `data` is the start of a file: a character cut at its end is not counted."""
    if not final:
        cut = _cut_character(data)
        data = data[: len(data) - cut]
    return 2 * _invalid_utf8(data) <= _non_ascii(data)


def _cut_character(data: bytes) -> int:
    """How many bytes at the end of `data` begin a UTF-8 character that goes on after it."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    decoder.decode(data, final=False)
    return len(decoder.getstate()[0])


def _invalid_utf8(data: bytes) -> int:
    """How many bytes of `data` are not part of a valid UTF-8 character (in C, not per byte)."""
    return len(data) - len(data.decode("utf-8", errors="ignore").encode("utf-8"))


# Each byte that is not UTF-8, as surrogateescape writes it, to its Windows-1252 character
# (U+FFFD for the five Windows-1252 leaves undefined): one str.translate over the text.
_WINDOWS_1252 = {0xDC00 + b: bytes([b]).decode("cp1252", errors="replace") for b in range(128, 256)}


def _lenient_utf8(data: bytes) -> str:
    """UTF-8 with each invalid byte read as its Windows-1252 character."""
    return data.decode("utf-8", errors="surrogateescape").translate(_WINDOWS_1252)


def _non_ascii(data: bytes) -> int:
    return len(data) - len(data.translate(None, delete=bytes(range(128, 256))))


def _declared_legacy_encoding(head: bytes) -> str | None:
    match = _META_CHARSET.search(head)
    if match is None:
        return None
    try:
        codec = codecs.lookup(match.group(1).decode("ascii")).name
    except LookupError:
        return None
    return codec if codec in _HTML_LEGACY else None
