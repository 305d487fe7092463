"""Tag each vocabulary token with a language, by Unicode script (and optionally corpus frequency).

Used by the logit lens (`jlang.evals.logit_lens`) to turn top-k token ids into
language shares, as Aya-23's `logit_lens.py` and `cisnlp/code-logitlens` match
decoded tokens against per-language lists (methods.md §8.1, §9.4).

**Script of a token.** Each letter (Unicode category L*, and the vowel signs
M* of abugidas) is assigned the script that starts its Unicode name (LATIN,
CYRILLIC, CJK UNIFIED/COMPATIBILITY IDEOGRAPH -> Han, HIRAGANA/KATAKANA ->
Kana, HANGUL, ARABIC, DEVANAGARI, GREEK, HEBREW, THAI, ...). A token's script
is the majority script of its letters, except that any kana makes it Kana (a
Japanese token mixing kanji and kana). Tokens without letters (punctuation,
digits, spaces, byte pieces) and special/added tokens (`<bos>`, `<unused3>`)
are tagged `none`.

**Script -> language** (`SCRIPT_LANGUAGES`): a script names a language only
when exactly one of the study's languages is written in it:

    Latin       en fr es de id vi pt it nl pl tr sv da no fi cs ro hu ... (ambiguous)
    Cyrillic    ru uk bg be mk sr kk ky tg mn
    Han         zh ja (ko)                  (ambiguous: kanji are Japanese too)
    Kana        ja
    Hangul      ko
    Arabic      ar fa ur ps ug
    Devanagari  hi mr ne
    Greek el, Hebrew he, Thai th, Bengali bn, Tamil ta, Telugu te, ...

With the default 12 languages this gives ru, ja (kana), ko, ar, hi uniquely;
Latin-script tokens (en fr es de id vi) and Han tokens (zh or ja) **cannot be
told apart by script** and get the labels `Latin?` and `Han?`. A script used by
none of the study's languages is `other`.

**Frequency resolution (optional).** Given per-language token counts from a
corpus (`token_counts`, e.g. the default corpus's train split), an ambiguous
token is given to the candidate language k whose share of the normalised
frequency `(c_k / n_k) / Σ_candidates (c_j / n_j)` is at least `min_share`,
provided the token occurs at least `min_count` times over the candidates;
otherwise it stays ambiguous. This is a heuristic: function words shared by
several languages ("de", "la") rightly stay ambiguous, and rare tokens are
left alone.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from jlang.data.pipeline import tokenize_corpus

__all__ = [
    "SCRIPT_LANGUAGES",
    "TokenTagger",
    "char_script",
    "special_ids",
    "text_script",
    "token_counts",
    "token_texts",
]

SCRIPT_LANGUAGES: dict[str, tuple[str, ...]] = {
    "Latin": (
        "en",
        "fr",
        "es",
        "de",
        "id",
        "vi",
        "pt",
        "it",
        "nl",
        "pl",
        "tr",
        "sv",
        "da",
        "no",
        "nb",
        "fi",
        "cs",
        "sk",
        "sl",
        "hr",
        "ro",
        "hu",
        "ca",
        "eu",
        "gl",
        "et",
        "lv",
        "lt",
        "ms",
        "sw",
        "af",
        "sq",
        "az",
        "uz",
        "is",
        "ga",
        "cy",
        "eo",
        "tl",
        "jv",
        "ha",
        "yo",
        "zu",
        "xh",
        "so",
        "mt",
        "lb",
    ),
    "Cyrillic": ("ru", "uk", "bg", "be", "mk", "sr", "kk", "ky", "tg", "mn", "tt", "ba"),
    "Han": ("zh", "ja", "ko"),
    "Kana": ("ja",),
    "Hangul": ("ko",),
    "Arabic": ("ar", "fa", "ur", "ps", "ug", "ckb", "sd"),
    "Devanagari": ("hi", "mr", "ne", "sa"),
    "Greek": ("el",),
    "Hebrew": ("he", "yi"),
    "Thai": ("th",),
    "Bengali": ("bn", "as"),
    "Tamil": ("ta",),
    "Telugu": ("te",),
    "Kannada": ("kn",),
    "Malayalam": ("ml",),
    "Gujarati": ("gu",),
    "Gurmukhi": ("pa",),
    "Georgian": ("ka",),
    "Armenian": ("hy",),
    "Ethiopic": ("am", "ti"),
    "Khmer": ("km",),
    "Lao": ("lo",),
    "Myanmar": ("my",),
    "Sinhala": ("si",),
    "Tibetan": ("bo",),
}

# First word(s) of a Unicode character name -> script.
_NAME_PREFIX = (
    ("CJK UNIFIED IDEOGRAPH", "Han"),
    ("CJK COMPATIBILITY IDEOGRAPH", "Han"),
    ("HALFWIDTH KATAKANA", "Kana"),
    ("HALFWIDTH HANGUL", "Hangul"),
    ("KATAKANA-HIRAGANA", "Kana"),
    ("HIRAGANA", "Kana"),
    ("KATAKANA", "Kana"),
    ("HANGUL", "Hangul"),
    ("FULLWIDTH LATIN", "Latin"),
)
_FIRST_WORD = {s.upper(): s for s in SCRIPT_LANGUAGES}
_SPECIAL = re.compile(r"^<[^<>\s]+>$")

NONE, OTHER = "none", "other"


@lru_cache(maxsize=65536)
def char_script(c: str) -> str | None:
    """The script of one character if it is a letter (or an abugida vowel sign), else None."""
    cat = unicodedata.category(c)
    if cat[0] not in "LM":
        return None
    name = unicodedata.name(c, "")
    if not name or name.startswith("COMBINING"):
        return None
    for prefix, script in _NAME_PREFIX:
        if name.startswith(prefix):
            return script
    first = name.split(" ", 1)[0]
    return _FIRST_WORD.get(first, OTHER if cat[0] == "L" else None)


def text_script(text: str) -> str | None:
    """Majority script of the letters of `text` (any kana -> "Kana"); None without letters."""
    counts: dict[str, int] = {}
    for c in text:
        s = char_script(c)
        if s is not None:
            counts[s] = counts.get(s, 0) + 1
    if not counts:
        return None
    if "Kana" in counts:
        return "Kana"
    return max(sorted(counts), key=lambda s: counts[s])


def token_texts(tokenizer, vocab_size: int | None = None) -> list[str]:
    """The decoded text of every token id (special and added tokens as their literal form)."""
    n = vocab_size or len(tokenizer)
    return tokenizer.batch_decode([[i] for i in range(n)])


def special_ids(tokenizer) -> set[int]:
    """The ids of special and added tokens (`<bos>`, `<unused3>`): never a language's or a keyword."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return ids


def token_counts(corpus, tokenizer, languages: Sequence[str], vocab_size: int) -> np.ndarray:
    """int64 `[K, V]`: how often each token occurs in each language of `corpus` (no BOS/EOS)."""
    tok = tokenize_corpus(corpus, tokenizer, languages=list(languages), add_bos=False, progress=False)
    return np.stack([np.bincount(tok.data[l].ids, minlength=vocab_size)[:vocab_size] for l in languages]).astype(
        np.int64
    )


@dataclass
class TokenTagger:
    """A language label per vocabulary token.

    Attributes:
      languages: the study's languages (the first labels).
      labels: `languages` + ambiguous script labels ("Latin?", "Han?") + ["other", "none"].
      tags: int16 `[V]`, index into `labels` of every token id.
      meta: how it was built (frequency resolution parameters, counts per label).
    """

    languages: list[str]
    labels: list[str]
    tags: np.ndarray
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        languages: Sequence[str],
        *,
        special_ids: set[int] = frozenset(),
        counts: np.ndarray | None = None,
        min_share: float = 0.6,
        min_count: int = 5,
    ) -> TokenTagger:
        """Tag decoded token texts; `counts` `[K, V]` (same order as `languages`) resolves ambiguous scripts."""
        languages = list(languages)
        study = set(languages)
        ambiguous: dict[str, tuple[str, ...]] = {}
        for script, langs in SCRIPT_LANGUAGES.items():
            cand = tuple(l for l in languages if l in langs)
            if len(cand) > 1:
                ambiguous[script] = cand
        labels = languages + [f"{s}?" for s in ambiguous] + [OTHER, NONE]
        index = {l: i for i, l in enumerate(labels)}
        tags = np.full(len(texts), index[NONE], np.int16)
        token_script: list[str | None] = [None] * len(texts)
        for v, text in enumerate(texts):
            if v in special_ids or _SPECIAL.match(text.strip() or " "):
                continue
            script = text_script(text)
            token_script[v] = script
            if script is None:
                continue
            if script in ambiguous:
                tags[v] = index[f"{script}?"]
                continue
            cand = [l for l in SCRIPT_LANGUAGES.get(script, ()) if l in study]
            tags[v] = index[cand[0]] if len(cand) == 1 else index[OTHER]
        resolved = 0
        if counts is not None:
            counts = np.asarray(counts, np.float64)
            if counts.shape != (len(languages), len(texts)):
                raise ValueError(f"counts must be [{len(languages)}, {len(texts)}], got {counts.shape}")
            totals = np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
            rel = counts / totals
            for script, cand in ambiguous.items():
                rows = [languages.index(l) for l in cand]
                vs = np.flatnonzero(tags == index[f"{script}?"])
                r = rel[rows][:, vs]  # [C, n]
                share = r / np.maximum(r.sum(axis=0, keepdims=True), 1e-300)
                best = share.argmax(axis=0)
                ok = (counts[rows][:, vs].sum(axis=0) >= min_count) & (share.max(axis=0) >= min_share)
                tags[vs[ok]] = [index[cand[b]] for b in best[ok]]
                resolved += int(ok.sum())
        meta = {
            "rule": "majority Unicode script of the token's letters (any kana -> Kana); special tokens and tokens "
            "without letters -> none; SCRIPT_LANGUAGES maps a script to a language when exactly one study "
            "language uses it",
            "ambiguous_scripts": {s: list(c) for s, c in ambiguous.items()},
            "frequency_resolution": None
            if counts is None
            else {"min_share": min_share, "min_count": min_count, "resolved_tokens": resolved},
            "tokens_per_label": {l: int((tags == i).sum()) for i, l in enumerate(labels)},
        }
        return cls(languages, labels, tags, meta)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        languages: Sequence[str],
        *,
        vocab_size: int | None = None,
        counts: np.ndarray | None = None,
        min_share: float = 0.6,
        min_count: int = 5,
    ) -> TokenTagger:
        """Tag the vocabulary of a `transformers` tokenizer (decoded token by token)."""
        texts = token_texts(tokenizer, vocab_size)
        return cls.from_texts(
            texts,
            languages,
            special_ids=special_ids(tokenizer),
            counts=counts,
            min_share=min_share,
            min_count=min_count,
        )

    def tag_text(self, text: str) -> str:
        """The label a token with this decoded text gets by script alone (for checks and tests)."""
        return type(self).from_texts([text], self.languages).labels_of([0])[0]

    def labels_of(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        return [self.labels[t] for t in self.tags[np.asarray(ids, np.int64)]]

    def shares(self, ids: np.ndarray) -> np.ndarray:
        """float64 `[num_labels]`: share of each label among the token ids `ids` (any shape; -1 ignored)."""
        flat = np.asarray(ids, np.int64).ravel()
        flat = flat[flat >= 0]
        counts = np.bincount(self.tags[flat], minlength=len(self.labels)).astype(np.float64)
        return counts / max(flat.size, 1)
