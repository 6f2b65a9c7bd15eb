"""Strings from records written into Markdown: shown as the text they are, never as structure; generated blocks between markers.

A table cell ends at `|`, a line break ends the table, `<` opens raw HTML (and the README's own block
markers), `[` a link, backticks a code span. Every string that comes from a record, a file name or
another machine goes through `escape` (plain text) or `code` (an identifier in a code span).
"""

from __future__ import annotations

import re

# Characters that start Markdown structure in a table cell; each is shown literally after a backslash, except
# the angle brackets and "&", written as entities so that no "<!--" (the README's markers) survives in any form.
ACTIVE = re.compile(r"[\\`*\[\]|~]")
ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# "_" opens or closes emphasis unless it sits inside a word ("avx512_vnni", "torch._int_mm"): a "_" kept
# bare always has a letter or digit after it and a letter, digit or "." before it, so it can close nothing.
LOOSE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9.])_|_(?![A-Za-z0-9])")
BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
# What may stand in a code span as it is: no backtick, pipe, angle bracket, backslash or line break.
PLAIN_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:/@+=,()-]+(?: [A-Za-z0-9_.:/@+=,()-]+)*")


def escape(value: object) -> str:
    """`value` as one line of literal Markdown text (a table cell, a sentence)."""
    text = BREAKS.sub(" ", str(value))
    text = re.sub("[&<>]", lambda m: ENTITIES[m.group(0)], text)
    text = ACTIVE.sub(lambda m: "\\" + m.group(0), text)
    return LOOSE_UNDERSCORE.sub(r"\\_", text)


def code(value: object) -> str:
    """An identifier (method, machine, layer, path) in a code span; anything else as escaped text."""
    text = str(value)
    return f"`{text}`" if PLAIN_IDENTIFIER.fullmatch(text) else escape(text)


def marker_stem(marker: str) -> str:
    """ "<!-- fleet:begin (python -m ...) -->" -> "<!-- fleet:begin": what the README must hold once, whatever follows it."""
    return marker.split(" (", 1)[0].removesuffix(" -->")


def check_markers(text: str, markers: tuple[str, str]) -> None:
    """Exactly one begin marker, then exactly one end marker: anything else would make a rewrite keep or copy old text."""
    begin, end = markers
    counts = {m: text.count(marker_stem(m)) for m in markers}
    if counts[begin] == 0 or counts[end] == 0:
        raise ValueError(f"the README lacks the markers of a generated block; add the two lines {begin!r} and {end!r}")
    if counts[begin] > 1 or counts[end] > 1:
        raise ValueError(
            f"the README holds {counts[begin]} {marker_stem(begin)!r} and {counts[end]} {marker_stem(end)!r}; keep one of each"
        )
    if text.index(marker_stem(end)) < text.index(marker_stem(begin)) or begin not in text or end not in text:
        raise ValueError(f"the README's markers are out of order or altered; write {begin!r}, the block, then {end!r}")
