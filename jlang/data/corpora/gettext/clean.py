"""Cleaning one catalog message into one line of text, and the key that splits and deduplicates it.

Rules (each one exists because catalogs are UI strings, not prose): strip placeholders (`%(name)s`, `%s`,
`%d`, `%1$s`, `{0}`, `{name}`, `{{ var }}`, `{% tag %}`, `${x}`), HTML/XML tags, decode entities
(`&amp;` -> `&`), drop quote or bracket pairs left empty, collapse whitespace (newlines included, so a
sentence is one line).
"""

from __future__ import annotations

import html
import re

from jlang.data.corpora.common import heldout_fraction_of

__all__ = ["clean_message", "count_words", "english_key", "is_code_block", "is_heldout"]

_PRINTF = re.compile(r"%(?:\d+\$)?(?:\([^()\s]*\))?[#0+\-]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[hlLqjzt]?[diouxXeEfFgGcrsa]")
_PRINTF_POSITIONAL_QT = re.compile(r"%\d+(?![\d$])")  # Qt-style %1, %2 (never followed by a conversion)
_TEMPLATE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\$\{[^{}]*\}")
_BRACE = re.compile(r"\{[^{}\s]*\}")
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:_-]*(?:\s[^<>]*)?/?>|<![^<>]*>")
_BLOCK_TAGS = re.compile(r"</?(?:br|p|div|li|ul|ol|h[1-6]|tr|td|th|table|dd|dt|dl|hr|section|pre)\b[^<>]*>", re.I)
_ANGLE_URL = re.compile(r"<((?:https?|ftp|mailto):[^<>\s]+)>")
_GENSHI = re.compile(r"\[\d+:([^\[\]]*)\]")  # Trac/Genshi i18n markup: "[1:click here]" -> "click here"
_HOLE = "\x03"  # where a placeholder was
_HOLE_PERCENT = re.compile(_HOLE + r"%")  # "%(value)s%% off" -> hole, not a dangling "%"
_HOLE_BEFORE_PUNCT = re.compile(r"[ \t]*" + _HOLE + r"(?=[\s" + _HOLE + r"]*[.,:;!?)\]»”’。，：；！？、）])")
_GAP = r"[\s" + _HOLE + r"]*"
_EMPTY_PAIRS = re.compile(
    "|".join(
        a + _GAP + b
        for a, b in [
            (r"\(", r"\)"),
            (r"\[", r"\]"),
            (r"\{", r"\}"),
            ("<", ">"),
            ('"', '"'),
            ("'", "'"),
            ("“", "”"),
            ("„", "“"),
            ("‘", "’"),
            ("«", "»"),
            ("‹", "›"),
            ("「", "」"),
            ("『", "』"),
            ("《", "》"),
            ("（", "）"),
            ("【", "】"),
            ("`+", "`+"),
        ]
    )
)
_SPACE = re.compile(r"\s+")
_LEADING_JUNK = re.compile(r"^[\s:;,.|/\-–—]+")
_WORD = re.compile(r"[^\W\d_]", re.UNICODE)
# Messages that are blocks of code or wiki markup, not sentences.
_CODE_BLOCK = re.compile(r"\{\{\{|```|^\s*\.\. \w+::", re.M)


def clean_message(text: str) -> str:
    """Remove placeholders and markup from one catalog message; return one line of text.

    Why: the corpus feeds activation statistics, where `%(name)s` or `<a href>`
    would be frequent, language-neutral tokens that dilute what is counted.
    A placeholder's hole is closed up before punctuation ("equal to %(n)s." ->
    "equal to."), and quotes or brackets left empty are removed.
    """
    text = text.replace("%%", "\x00")  # a literal percent sign survives placeholder stripping
    text = _TEMPLATE.sub(_HOLE, text)
    text = _PRINTF.sub(_HOLE, text)
    text = _PRINTF_POSITIONAL_QT.sub(_HOLE, text)
    text = text.replace("{{", "\x01").replace("}}", "\x02")
    text = _BRACE.sub(_HOLE, text)
    text = text.replace("\x01", "{").replace("\x02", "}").replace("\x00", "%")
    text = _HOLE_PERCENT.sub(_HOLE, text)
    text = _ANGLE_URL.sub(r"\1", text)
    text = _BLOCK_TAGS.sub(" ", text)
    text = _TAG.sub("", text)
    text = _GENSHI.sub(r"\1", text)
    text = html.unescape(text)
    previous = None
    while previous != text:
        previous = text
        text = _EMPTY_PAIRS.sub("", text)
    text = _HOLE_BEFORE_PUNCT.sub("", text).replace(_HOLE, " ")
    text = _SPACE.sub(" ", text)
    while previous != text:  # pairs emptied by the hole removal
        previous = text
        text = _SPACE.sub(" ", _EMPTY_PAIRS.sub("", text))
    return _LEADING_JUNK.sub("", text).strip()


def count_words(text: str) -> int:
    """Whitespace-separated tokens that contain at least one letter."""
    return sum(1 for tok in text.split() if _WORD.search(tok))


def is_code_block(message: str) -> bool:
    """True for a message that is a block of code or wiki markup, not a sentence."""
    return bool(_CODE_BLOCK.search(message))


def english_key(english: str) -> str:
    """The split/dedup key of a cleaned English message: whitespace-collapsed and casefolded."""
    return _SPACE.sub(" ", english).strip().casefold()


def is_heldout(english: str, fraction: float) -> bool:
    """Whether the English message (cleaned) belongs to the held-out split."""
    return heldout_fraction_of(english_key(english)) < fraction
