"""Rendering user-supplied strings (file names, labels, URIs, paths) into Markdown and HTML.

One home for escaping: every Markdown table cell, list item or heading that shows a string a
user controls goes through :func:`escape_md`; literal blocks go through :func:`md_code_block`;
HTML uses the standard library's :func:`html.escape`. Rules follow CommonMark 0.31
(backslash escapes of ASCII punctuation, section 2.4; entity references, section 2.5; fenced
code blocks, section 4.5) and GitHub Flavored Markdown tables (``\\|`` inside a cell).
"""
from __future__ import annotations

import html
import re
import unicodedata

# Inline Markdown syntax: code spans, emphasis, links/images, tables, strikethrough, escapes.
# "_" between two ASCII alphanumerics cannot open or close emphasis (CommonMark 6.2,
# intraword rule) and stays unescaped, so ``my_photo.png`` stays readable in the raw file.
_INLINE = re.compile(r"([\\`*\[\]|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
# Block syntax that only matters at the start of a line: ATX headings, list bullets,
# setext underlines, ordered-list markers ("12." / "12)").
_LEADING = re.compile(r"^(\s*)([#+\-=])")
_LEADING_ORDERED = re.compile(r"^(\s*\d{1,9})([.)])(?=\s|$)")
_BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def _visible(ch: str) -> str:
    """Whitespace controls -> space; other control / bidi-override characters -> U+FFFD."""
    if ch in "\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029":
        return " "
    if unicodedata.category(ch) == "Cc" or ord(ch) in _BIDI:
        return "\ufffd"
    return ch


def escape_md(text: object) -> str:
    """Make any string safe to place in a Markdown table cell, list item or heading.

    The result renders as the literal text (CommonMark / GFM, and the Markdown Dagster shows
    in asset metadata) and can never open HTML, a link, an image, a code span, emphasis or a
    new table column or row:

    - ``&``, ``<``, ``>``, ``"``, ``'`` become HTML entities (:func:`html.escape`), so raw
      HTML such as ``<img src=x onerror=...>`` shows as text;
    - ``\\ ` * [ ] | ~`` are backslash-escaped (CommonMark 2.4; ``\\|`` keeps a GFM
      table cell intact), and so is ``_`` unless it sits between two ASCII letters/digits
      (intraword, where it cannot delimit emphasis: CommonMark 6.2);
    - a leading ``#``, ``+``, ``-``, ``=`` or ``12.`` / ``12)`` is backslash-escaped so it
      cannot start a heading or list;
    - line breaks (``\\n``, ``\\r``, U+2028, ...) and tabs become a space (one cell stays one
      row); other control characters and Unicode bidi overrides (U+202E, which can disguise
      ``evil\\u202egnp.exe`` as ``evilexe.png``) become U+FFFD.

    Args:
        text: any object; ``str(text)`` is escaped. ``None`` gives ``""``.

    Returns:
        Escaped text (str), on one line.
    """
    if text is None:
        return ""
    s = "".join(_visible(c) for c in str(text))
    s = html.escape(s, quote=True)
    s = _INLINE.sub(r"\\\1", s)
    s = _LEADING.sub(r"\1\\\2", s, count=1)
    return _LEADING_ORDERED.sub(r"\1\\\2", s, count=1)


def md_table(rows: list[list[object]]) -> str:
    """A GFM table: the first row is the header; every cell goes through :func:`escape_md`.

    Raises:
        ValueError: ``rows`` is empty or rows differ in length.
    """
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError("md_table needs a header row and rows of equal length")
    esc = [[escape_md(c) for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(esc[0])] +
                     ["| " + " | ".join(r) + " |" for r in esc[1:]])


def md_code_block(text: str, info: str = "") -> str:
    """A fenced code block showing ``text`` verbatim (CommonMark 4.5): the fence is one
    backtick longer than the longest backtick run in ``text`` (at least 3), so no line of
    ``text`` can close it. ``info`` (the language tag) must not contain backticks or spaces.

    Raises:
        ValueError: ``info`` contains a backtick or whitespace.
    """
    if re.search(r"[`\s]", info):
        raise ValueError(f"code block info string must be one word without backticks, got {info!r}")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"
