"""Code-mixed sentences from a parallel corpus: word-level substitution at a mixing ratio.

The Aya-23 study (Trinley et al. 2025; methods.md §8.3) mixes a base language
(fr, zh) with a partner (en, es, it, ja, ko) by rule-based word-to-word
substitution from bilingual dictionaries at mixing ratios 0.25 / 0.5 / 0.75.
jlang has no dictionaries, but its default corpus has a *parallel* split (the same
UI message in every language), so the substitutions come from the aligned
sentence itself:

1. **Word units.** Letters, marks and digits form words; in languages written
   without spaces (zh, ja, th, ...) every Han character is one unit and each run
   of hiragana, katakana or another script is one unit (no segmenter needed).
2. **Association.** Over all rows holding both languages, the Dice coefficient
   `2·c(w, v) / (c(w) + c(v))` of base unit `w` and partner unit `v` (`c` counts
   rows; case-folded) measures how often they occur in the same row.
3. **Linking.** Inside each row, base and partner units are linked one-to-one,
   best score first (competitive linking), the score being Dice plus a small
   bonus for similar relative positions (`position_weight`), which decides ties
   between words seen only once.
4. **Mixing.** For ratio `r`, `round(r · n)` of the sentence's `n` base units
   (at most the linked ones) are picked at random (seeded per row) and replaced
   by their linked partner unit. The share actually replaced is recorded.

A set at ratio `r` is named `"{base}-{partner}@{r}"`. Everything is
deterministic given `seed`. The linked words are associations learnt from a few
hundred sentences, not a dictionary: many are exact translations for frequent
words (file, user, password, ...), some only co-occur. The mixed text is thus a
base-language sentence with partner-language words inserted where the partner
sentence has them, which is what the neuron analyses need (which language's
neurons fire on which tokens), not a fluent code-switched sentence.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jlang.data.corpora.gettext.cache import ensure_default_corpus
from jlang.io.atomic import atomic_directory

__all__ = [
    "CodeMixError",
    "CodeMixed",
    "build_codemix",
    "codemix_pair",
    "dice_table",
    "link_units",
    "read_parallel",
    "units",
]

DEFAULT_RATIOS = (0.25, 0.5, 0.75)
# Languages written without spaces between words: every Han character is a unit and insertions get spaces.
NO_SPACE = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue"})


class CodeMixError(ValueError):
    """Code-mixing cannot be done as asked (no rows for a pair, bad ratio, ...)."""


def _base(code: str) -> str:
    return code.replace("-", "_").split("_")[0].lower()


def _char_class(ch: str) -> str:
    """'space', 'punct', 'han', 'hira', 'kata' or 'word' (letters, marks, digits of other scripts)."""
    if ch.isspace():
        return "space"
    cat = unicodedata.category(ch)
    if cat[0] not in "LMN":
        return "punct"
    name = unicodedata.name(ch, "")
    if name.startswith(("CJK UNIFIED", "CJK COMPATIBILITY IDEOGRAPH")):
        return "han"
    if name.startswith("HIRAGANA"):
        return "hira"
    if name.startswith("KATAKANA") or ch == "ー":
        return "kata"
    return "word"


def units(text: str, language: str) -> list[tuple[int, int]]:
    """Word units of `text` as `(start, end)` character spans (see the module doc)."""
    no_space = _base(language) in NO_SPACE
    spans: list[tuple[int, int]] = []
    start, cls = None, None
    for i, ch in enumerate(text):
        c = _char_class(ch)
        if c in ("space", "punct"):
            c = None
        elif not no_space and c in ("han", "hira", "kata"):
            c = "word"  # a stray kanji in a spaced language is part of a word
        split_here = c != cls or (no_space and c == "han")
        if start is not None and split_here:
            spans.append((start, i))
            start = None
        if c is not None and start is None:
            start = i
        cls = c
    if start is not None:
        spans.append((start, len(text)))
    return spans


def _words(text: str, language: str) -> list[str]:
    return [text[a:b].casefold() for a, b in units(text, language)]


def read_parallel(path: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """Rows `{lang: sentence}` of a parallel JSONL file (`{"text": {...}}` per line); default: the default corpus's."""
    if path is None:
        path = ensure_default_corpus() / "parallel" / "heldout.jsonl"
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            text = obj.get("text", obj) if isinstance(obj, dict) else None
            if not isinstance(text, dict):
                raise CodeMixError(f"{path}:{n}: expected an object with a 'text' mapping language -> sentence")
            rows.append({str(k): str(v) for k, v in text.items()})
    return rows


def dice_table(rows: Sequence[Mapping[str, str]], base: str, partner: str) -> dict[tuple[str, str], float]:
    """Dice coefficient of (base word, partner word) over the rows holding both languages (row counts)."""
    cb, cp, cj = Counter(), Counter(), Counter()
    for row in rows:
        if base not in row or partner not in row:
            continue
        wb, wp = set(_words(row[base], base)), set(_words(row[partner], partner))
        cb.update(wb)
        cp.update(wp)
        cj.update((w, v) for w in wb for v in wp)
    return {(w, v): 2.0 * n / (cb[w] + cp[v]) for (w, v), n in cj.items()}


def link_units(
    base_words: Sequence[str],
    partner_words: Sequence[str],
    dice: Mapping[tuple[str, str], float],
    *,
    position_weight: float = 0.1,
) -> dict[int, int]:
    """One-to-one links base unit index -> partner unit index, best `dice + position_weight·closeness` first."""
    n, m = len(base_words), len(partner_words)
    if not n or not m:
        return {}
    scored = []
    for i, w in enumerate(base_words):
        for j, v in enumerate(partner_words):
            closeness = 1.0 - abs((i + 0.5) / n - (j + 0.5) / m)
            scored.append((-(dice.get((w, v), 0.0) + position_weight * closeness), i, j))
    scored.sort()
    links: dict[int, int] = {}
    used: set[int] = set()
    for _, i, j in scored:
        if i not in links and j not in used:
            links[i] = j
            used.add(j)
    return links


def _join(pieces: Sequence[tuple[str, bool]]) -> str:
    """Concatenate text pieces; an inserted word from a spaced language gets a space next to letters/digits."""
    out = ""
    prev_spaced = False
    for text, spaced in pieces:
        if not text:
            continue
        if out and (spaced or prev_spaced) and out[-1].isalnum() and text[0].isalnum():
            out += " "
        out += text
        prev_spaced = spaced
    return out


def _row_rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def codemix_pair(
    base_text: str,
    partner_text: str,
    base: str,
    partner: str,
    ratio: float,
    dice: Mapping[tuple[str, str], float],
    *,
    rng: np.random.Generator,
    position_weight: float = 0.1,
) -> tuple[str, int, int]:
    """One code-mixed sentence: `(text, replaced units, base units)`."""
    if not 0.0 <= ratio <= 1.0:
        raise CodeMixError(f"mixing ratio must be in [0, 1], got {ratio}")
    b_spans, p_spans = units(base_text, base), units(partner_text, partner)
    b_words = [base_text[a:b].casefold() for a, b in b_spans]
    p_words = [partner_text[a:b].casefold() for a, b in p_spans]
    links = link_units(b_words, p_words, dice, position_weight=position_weight)
    n = len(b_spans)
    target = min(int(np.floor(ratio * n + 0.5)), len(links))
    linked = sorted(links)
    chosen = set(rng.choice(linked, size=target, replace=False).tolist()) if target else set()
    insert_spaced = _base(base) in NO_SPACE and _base(partner) not in NO_SPACE
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for i, (a, b) in enumerate(b_spans):
        pieces.append((base_text[pos:a], False))
        if i in chosen:
            pa, pb = p_spans[links[i]]
            pieces.append((partner_text[pa:pb], insert_spaced))
        else:
            pieces.append((base_text[a:b], False))
        pos = b
    pieces.append((base_text[pos:], False))
    return _join(pieces), len(chosen), n


@dataclass
class CodeMixed:
    """Code-mixed text sets: name -> sentences, with how each was made.

    `sets` holds the unmixed base and partner sentences of the same rows (names = the
    language codes) and one set per (base, partner, ratio) named `"{base}-{partner}@{ratio}"`.
    `info[name]` = {base, partner, ratio, sentences, replaced_share (replaced / base units)}.
    """

    sets: dict[str, list[str]]
    info: dict[str, dict]
    rows: int
    meta: dict = field(default_factory=dict)

    def names(self, base: str | None = None, partner: str | None = None) -> list[str]:
        return [
            n
            for n, i in self.info.items()
            if i.get("ratio") is not None
            and (base is None or i["base"] == base)
            and (partner is None or i["partner"] == partner)
        ]

    def save(self, directory: str | os.PathLike) -> Path:
        """`{directory}/{name}.txt` per set (one sentence per line) and `codemix.json` (info + meta). Atomic."""
        d = Path(directory)
        with atomic_directory(d) as tmp:
            for name, texts in self.sets.items():
                (tmp / f"{name}.txt").write_text(
                    "".join(t.replace("\n", " ") + "\n" for t in texts),
                    encoding="utf-8",
                )
            (tmp / "codemix.json").write_text(
                json.dumps({"info": self.info, "rows": self.rows, "meta": self.meta}, ensure_ascii=False, indent=1),
                encoding="utf-8",
            )
        return d


def set_name(base: str, partner: str, ratio: float) -> str:
    return f"{base}-{partner}@{ratio:g}"


def build_codemix(
    rows: Sequence[Mapping[str, str]],
    bases: Sequence[str],
    partners: Sequence[str],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    *,
    seed: int = 0,
    max_rows: int | None = None,
    position_weight: float = 0.1,
) -> CodeMixed:
    """Code-mixed sets for every base x partner (partner != base) x ratio, on the rows holding all the languages.

    Args:
      rows: parallel rows `{lang: sentence}` (`read_parallel()`).
      bases, partners: language codes (Aya: bases fr, zh; partners en, es, it, ja, ko).
      ratios: mixing ratios in [0, 1].
      seed: seeds the choice of replaced words (per row and set; the result does not depend on set order).
      max_rows: use the first `max_rows` common rows (file order).
      position_weight: weight of the relative-position bonus in the linking score.
    """
    bases, partners = list(dict.fromkeys(bases)), list(dict.fromkeys(partners))
    if not bases or not partners:
        raise CodeMixError("give at least one base and one partner language")
    for r in ratios:
        if not 0.0 <= float(r) <= 1.0:
            raise CodeMixError(f"mixing ratios must be in [0, 1], got {r}")
    langs = list(dict.fromkeys(bases + partners))
    common = [row for row in rows if all(row.get(l, "").strip() for l in langs)]
    if max_rows is not None:
        common = common[:max_rows]
    if not common:
        counts = {l: sum(1 for r in rows if r.get(l, "").strip()) for l in langs}
        raise CodeMixError(f"no parallel row holds all of {langs} (rows per language: {counts})")
    dice = {(b, p): dice_table(rows, b, p) for b in bases for p in partners if p != b}
    sets = {l: [row[l] for row in common] for l in langs}
    info: dict[str, dict] = {l: {"base": l, "partner": None, "ratio": None, "sentences": len(common)} for l in langs}
    for b in bases:
        for p in partners:
            if p == b:
                continue
            for r in ratios:
                name = set_name(b, p, float(r))
                texts, replaced, total = [], 0, 0
                for idx, row in enumerate(common):
                    text, k, n = codemix_pair(
                        row[b],
                        row[p],
                        b,
                        p,
                        float(r),
                        dice[(b, p)],
                        rng=_row_rng(seed, f"{name}\x00{idx}"),
                        position_weight=position_weight,
                    )
                    texts.append(text)
                    replaced, total = replaced + k, total + n
                sets[name] = texts
                info[name] = {
                    "base": b,
                    "partner": p,
                    "ratio": float(r),
                    "sentences": len(texts),
                    "replaced_share": replaced / total if total else 0.0,
                }
    return CodeMixed(
        sets=sets,
        info=info,
        rows=len(common),
        meta={
            "bases": bases,
            "partners": partners,
            "ratios": [float(r) for r in ratios],
            "seed": seed,
            "position_weight": position_weight,
            "method": "Dice-linked word substitution from the parallel rows (jlang.data.corpora.codemix)",
        },
    )
