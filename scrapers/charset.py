"""Bytes of a web page to text: the BOM, then the HTTP charset, then <meta charset>, then detection."""

import codecs
import re

import charset_normalizer

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE, whose BOM is its prefix
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Browsers read these labels as windows-1252 (WHATWG Encoding standard), and so do the servers that send them.
_READ_AS_WINDOWS_1252 = frozenset({"iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "us-ascii", "ascii"})
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-z0-9_:.\-]+)""", re.IGNORECASE)
_META_SCAN_BYTES = 8192


def bom_encoding(body: bytes) -> str | None:
    return next((name for bom, name in _BOMS if body.startswith(bom)), None)


def meta_charset(body: bytes) -> str | None:
    match = _META_CHARSET.search(body[:_META_SCAN_BYTES])
    return match.group(1).decode("ascii") if match else None


def _decode_strict(body: bytes, label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().lower()
    try:
        return body.decode("cp1252" if label in _READ_AS_WINDOWS_1252 else label)
    except (LookupError, UnicodeDecodeError):
        return None


def decode_html(body: bytes, header_charset: str | None) -> str:
    """Decode with the first declared encoding that fits the bytes; never raises on bad bytes."""
    for label in (bom_encoding(body), header_charset, meta_charset(body)):
        text = _decode_strict(body, label)
        if text is not None:
            return text
    best = charset_normalizer.from_bytes(body).best()
    return str(best) if best is not None else body.decode("utf-8", errors="replace")
