"""Logit lens over code: per layer, how many of the top-k decoded tokens are keywords of each programming language.

cisnlp/code-logitlens (Kargaran et al. 2025, methods.md §9.4) decodes every
layer's residual stream at every position of a code snippet as
`softmax(lm_head(model.norm(h_l)))`, keeps the top-10 tokens and matches them
against per-language keyword lists, to see where in depth a model "thinks in"
a programming language and whether English words surface in the middle layers.

Here, for each prompt language (a programming language of the code corpus, or
English) and layer, over the decoded positions of held-out files:

* `shares[p, l, k]`: share of the top-k tokens that are keywords of language k
  (`jlang.analysis.code_keywords.KEYWORDS`; tables overlap, so shares of
  different k can add up to more than 1);
* `exclusive[p, l, k]`: share that are keywords of k and of no other
  programming language in the study (C and C++ count as one family, as do
  JavaScript and TypeScript, since C++'s table holds C's; English counts as no
  programming language);
* `any_share[p, l]`: share that are a keyword of any programming language;
* `text_shares[p, k]`: the same share among the tokens of the text itself, the
  level the last layer should approach if it predicts the text well.

The top-k tokens come from the logit lens's batch loop (`jlang.evals.logit_lens.lens_rows`),
asked for the final-norm variant only (code-logitlens's), which halves the cost of the 18
unembeddings per position.

Snippets: each text is tokenized, and a window of `seq_len - 1` tokens from its
middle (past imports and headers) follows a BOS; the BOS position is not decoded.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jlang.analysis.code_keywords import CASE_INSENSITIVE, KEYWORDS
from jlang.evals.logit_lens import layer_panel, lens_rows
from jlang.evals.token_lang import special_ids, token_texts
from jlang.io.report import FigureWriter, Report, new_figure, save_figure, save_heatmaps
from jlang.models.decoder import Edits
from jlang.models.scoring import TokenRows, bos_ids, rows_from_token_lists
from jlang.models.vocab import DEFAULT_CHUNK

__all__ = [
    "KeywordLensResult",
    "KeywordTagger",
    "keyword_forms",
    "keyword_lens",
    "middle_window",
    "token_keywords",
]

_LEADING = "</#@.:$!-"
ENGLISH = "english"
FAMILY = {
    "cpp": "c",
    "typescript": "javascript",
}  # languages whose keyword tables contain another's


# --------------------------------------------------------------------------- tagging


def keyword_forms(text: str) -> tuple[str, ...]:
    """The strings a decoded token is compared with: stripped of whitespace, then of leading `</#@.:$!-`."""
    t = text.strip()
    if not t:
        return ()
    bare = t.lstrip(_LEADING)
    return (t, bare) if bare and bare != t else (t,)


def token_keywords(text: str, languages: Sequence[str]) -> list[str]:
    """The languages among `languages` of which the decoded token `text` is a keyword."""
    forms = keyword_forms(text)
    out = []
    for lang in languages:
        table = KEYWORDS[lang]
        if any((f.lower() if lang in CASE_INSENSITIVE else f) in table for f in forms):
            out.append(lang)
    return out


@dataclass
class KeywordTagger:
    """Which vocabulary tokens are keywords of which language.

    Attributes:
      languages: keyword languages (keys of `KEYWORDS`).
      member: bool `[V, K]`, token v is a keyword of language k.
      exclusive: bool `[V, K]`, token v is a keyword of k and of no programming language of `languages` outside
        k's family (C/C++, JavaScript/TypeScript); for English: of no programming language.
      meta: keyword tokens per language.
    """

    languages: list[str]
    member: np.ndarray
    exclusive: np.ndarray
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_texts(cls, texts: Sequence[str], languages: Sequence[str], *, special_ids=frozenset()) -> KeywordTagger:
        """Tag decoded token texts (index = token id); special tokens are never keywords."""
        languages = list(languages)
        unknown = [l for l in languages if l not in KEYWORDS]
        if unknown:
            raise ValueError(f"no keyword table for {unknown}; tables exist for {sorted(KEYWORDS)}")
        member = np.zeros((len(texts), len(languages)), bool)
        for v, text in enumerate(texts):
            if v in special_ids:
                continue
            for lang in token_keywords(text, languages):
                member[v, languages.index(lang)] = True
        # exclusive: no other programming language claims the token, counting C/C++ and JavaScript/TypeScript
        # as one family each (C++'s table contains C's, so C would otherwise never own a keyword)
        family = [FAMILY.get(l, l) for l in languages]
        programming = np.array([l != ENGLISH for l in languages])
        exclusive = np.zeros_like(member)
        for i, lang in enumerate(languages):
            rivals = [j for j in range(len(languages)) if programming[j] and family[j] != family[i]]
            claimed = member[:, rivals].any(axis=1) if rivals else np.zeros(len(texts), bool)
            if lang == ENGLISH:
                claimed = member[:, programming].any(axis=1)
            exclusive[:, i] = member[:, i] & ~claimed
        meta = {
            "keyword_tokens": {l: int(member[:, i].sum()) for i, l in enumerate(languages)},
            "exclusive_tokens": {l: int(exclusive[:, i].sum()) for i, l in enumerate(languages)},
            "rule": "decoded token stripped of whitespace and leading </#@.:$!-, compared with the table "
            "(lowercase for html, english)",
        }
        return cls(languages, member, exclusive, meta)

    @classmethod
    def from_tokenizer(cls, tokenizer, languages: Sequence[str], *, vocab_size: int | None = None) -> KeywordTagger:
        """Tag the vocabulary of a `transformers` tokenizer, decoded token by token."""
        return cls.from_texts(token_texts(tokenizer, vocab_size), languages, special_ids=special_ids(tokenizer))

    def labels_of(self, token_id: int) -> list[str]:
        return [l for i, l in enumerate(self.languages) if self.member[token_id, i]]

    def shares(self, ids: np.ndarray) -> np.ndarray:
        """float64 `[K]`: share of the ids (any shape) that are keywords of each language."""
        flat = np.asarray(ids, np.int64).ravel()
        return self.member[flat].mean(axis=0) if flat.size else np.full(len(self.languages), np.nan)


# --------------------------------------------------------------------------- the lens


def middle_window(ids: Sequence[int], length: int) -> list[int]:
    """`length` consecutive ids from the middle of `ids` (all of them when shorter)."""
    ids = list(ids)
    start = max(0, (len(ids) - length) // 2)
    return ids[start : start + length]


@dataclass
class KeywordLensResult(Report):
    """Keyword shares of the logit lens over code (module doc).

    Attributes:
      languages: prompt languages P.
      keyword_languages: keyword tables K.
      shares, exclusive: float64 `[P, L, K]`.
      any_share: float64 `[P, L]` (keywords of any programming language).
      text_shares: float64 `[P, K]` (keyword share among the text's own tokens).
      positions: int64 `[P]` decoded positions.
      top_keywords: prompt -> per layer the 5 most frequent keyword tokens among the top-k (text, count).
    """

    languages: list[str]
    keyword_languages: list[str]
    shares: np.ndarray
    exclusive: np.ndarray
    any_share: np.ndarray
    text_shares: np.ndarray
    positions: np.ndarray
    top_keywords: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def own(self, which: str = "shares") -> np.ndarray:
        """float64 `[L, P]`: the share of the prompt's own keywords (`which` = "shares" or "exclusive")."""
        arr = getattr(self, which)
        out = np.full((arr.shape[1], len(self.languages)), np.nan)
        for p, lang in enumerate(self.languages):
            if lang in self.keyword_languages:
                out[:, p] = arr[p, :, self.keyword_languages.index(lang)]
        return out

    def peak_layers(self, which: str = "exclusive") -> dict[str, int | None]:
        """prompt language -> layer where its own keyword share peaks (None without a table or a keyword)."""
        own = self.own(which)
        return {
            l: (int(np.nanargmax(own[:, p])) if np.nanmax(own[:, p], initial=0.0) > 0 else None)
            for p, l in enumerate(self.languages)
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "jlang.KeywordLensResult/1",
            "languages": self.languages,
            "keyword_languages": self.keyword_languages,
            "shares": self.shares,
            "exclusive": self.exclusive,
            "any_share": self.any_share,
            "text_shares": self.text_shares,
            "positions": self.positions,
            "own": self.own("shares"),
            "own_exclusive": self.own("exclusive"),
            "top_keywords": self.top_keywords,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KeywordLensResult:
        arr = lambda x: np.array(x, dtype=object).astype(np.float64)
        return cls(
            languages=list(d["languages"]),
            keyword_languages=list(d["keyword_languages"]),
            shares=arr(d["shares"]),
            exclusive=arr(d["exclusive"]),
            any_share=arr(d["any_share"]),
            text_shares=arr(d["text_shares"]),
            positions=np.asarray(d["positions"], np.int64),
            top_keywords=d.get("top_keywords", {}),
            meta=dict(d.get("meta", {})),
        )

    def figures(self) -> dict[str, FigureWriter]:
        """`{prefix}.png`: per prompt language, every keyword language's share by layer (own language bold, its
        level in the text dashed); `{prefix}_own.png`: own-keyword share, layer x language."""
        return {"": functools.partial(plot_shares, self), "own": functools.partial(plot_own, self)}


def plot_shares(result: KeywordLensResult, path: Path) -> Path:
    """One panel per prompt language: each keyword language's share of the top-k by layer."""
    P, L = len(result.languages), result.shares.shape[1]
    ncols = min(4, P)
    nrows = -(-P // ncols)
    fig = new_figure(3.6 * ncols, 2.8 * nrows)
    colors = {l: f"C{i}" for i, l in enumerate(result.keyword_languages)}
    for p, lang in enumerate(result.languages):
        ax = fig.add_subplot(nrows, ncols, p + 1)
        for k, kl in enumerate(result.keyword_languages):
            own = kl == lang
            ax.plot(
                range(L),
                result.shares[p, :, k],
                color=colors[kl],
                lw=2.4 if own else 1.0,
                alpha=1.0 if own else 0.7,
                label=kl,
            )
            if own:
                ax.axhline(result.text_shares[p, k], color=colors[kl], ls="--", lw=1.0)
        ax.set_title(f"{lang} text: top-{result.meta.get('k')} keyword shares", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel("share")
        ax.set_ylim(bottom=0)
        if p == 0:
            ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def plot_own(result: KeywordLensResult, path: Path) -> Path:
    """Heat maps, layer x text language: own-language keywords in the top-k, and keywords of that language only."""
    panels = [
        layer_panel(result.own(w), result.languages, title=title, xlabel="text language", annotate=True, fmt="{:.2f}")
        for w, title in (
            ("shares", "own-language keywords in top-k"),
            ("exclusive", "keywords of the own language only"),
        )
    ]
    size = (0.6 * len(result.languages) + 3, 0.3 * result.shares.shape[1] + 2)
    return save_heatmaps(path, panels, ncols=2, panel_size=size)


def snippet_rows(tokenizer, texts: Mapping[str, Sequence[str]], seq_len: int) -> TokenRows:
    """BOS + `seq_len - 1` tokens from the middle of each text (texts of fewer than 2 tokens left out; group =
    prompt language index)."""
    bos = bos_ids(tokenizer)
    windows, group = [], []
    for p, lang in enumerate(texts):
        for ids in tokenizer(list(texts[lang]), add_special_tokens=False)["input_ids"]:
            w = middle_window(ids, seq_len - len(bos))
            if len(w) >= 2:
                windows.append(bos + w)
                group.append(p)
    return rows_from_token_lists(windows, [0] * len(windows), group)


def check_tagger(model, tagger: KeywordTagger | None, keyword_languages: Sequence[str]) -> KeywordTagger:
    """`tagger`, or one built from the model's tokenizer, covering `keyword_languages` and the model's vocabulary."""
    if tagger is None:
        tagger = KeywordTagger.from_tokenizer(model.tokenizer, keyword_languages, vocab_size=model.config.vocab_size)
    if tagger.languages != keyword_languages:
        raise ValueError(f"the tagger covers {tagger.languages}, not {keyword_languages}")
    if tagger.member.shape[0] != model.config.vocab_size:
        raise ValueError(
            f"the tagger covers {tagger.member.shape[0]} tokens but the model has {model.config.vocab_size}"
        )
    return tagger


def keyword_lens(
    model,
    texts: Mapping[str, Sequence[str]],
    *,
    keyword_languages: Sequence[str] | None = None,
    tagger: KeywordTagger | None = None,
    k: int = 10,
    seq_len: int = 48,
    batch_size: int = 8,
    vocab_chunk: int = DEFAULT_CHUNK,
    edits: Edits | None = None,
    progress: bool = True,
) -> KeywordLensResult:
    """Keyword shares of every layer's top-k decoded tokens on `texts` (prompt language -> snippets).

    Args:
      keyword_languages: keyword tables (default: the prompt languages that have one).
      tagger: a prebuilt `KeywordTagger` over `keyword_languages` (default: built from the tokenizer).
      k: top-k tokens per position and layer (code-logitlens: 10).
      seq_len: BOS + `seq_len - 1` tokens from the middle of each text.
      edits: decode an edited model (e.g. a language's neurons deactivated).
    """
    languages = list(texts)
    if not languages:
        raise ValueError("no texts given")
    empty = [l for l in languages if not texts[l]]
    if empty:
        raise ValueError(f"languages {empty} have no text")
    if keyword_languages is None:
        keyword_languages = [l for l in languages if l in KEYWORDS]
    keyword_languages = list(keyword_languages)
    tagger = check_tagger(model, tagger, keyword_languages)
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (BOS + one token), got {seq_len}")
    t0 = time.perf_counter()
    tok = model.tokenizer
    skip = len(bos_ids(tok))  # the BOS position is not part of the text
    rows = snippet_rows(tok, texts, seq_len)
    if not len(rows):
        raise ValueError("no text has 2 tokens to decode after its BOS")
    lengths = rows.lengths
    L, P, K = model.num_layers, len(languages), len(keyword_languages)
    member = tagger.member.astype(np.float64)
    exclusive = tagger.exclusive.astype(np.float64)
    hit, excl, any_pl = np.zeros((P, L, K)), np.zeros((P, L, K)), np.zeros((P, L))
    text_hit, text_n, positions = np.zeros((P, K)), np.zeros(P), np.zeros(P, np.int64)
    programming = np.array([l != ENGLISH for l in keyword_languages])
    counters = {p: [collections.Counter() for _ in range(L)] for p in range(P)}

    def fold_row(row: int, top: dict[str, np.ndarray], valid: np.ndarray) -> None:
        p = int(rows.group[row])
        decoded = valid.copy()
        decoded[:skip] = False
        sel = top["final_norm"][:, decoded]  # [L, n, k]
        positions[p] += int(decoded.sum())
        hit[p] += member[sel].sum(axis=(1, 2))
        excl[p] += exclusive[sel].sum(axis=(1, 2))
        any_pl[p] += member[sel][..., programming].any(axis=-1).sum(axis=(1, 2))
        own_ids = rows.ids[row, skip : lengths[row]]
        text_hit[p] += member[own_ids].sum(axis=0)
        text_n[p] += own_ids.size
        is_kw = tagger.member[sel].any(axis=-1)  # [L, n, k]
        for l in range(L):
            counters[p][l].update(sel[l][is_kw[l]].tolist())

    width = rows.ids.shape[1]  # one shape for every batch: one compilation
    plan = [(np.arange(i, min(i + batch_size, len(rows))), width) for i in range(0, len(rows), batch_size)]
    lens = {"k": k, "vocab_chunk": vocab_chunk, "edits": edits, "variants": ("final_norm",)}
    lens_rows(model, rows, plan, fold_row, batch_size=batch_size, desc="code logit lens", progress=progress, **lens)
    denom = np.maximum(positions, 1)[:, None, None] * k
    decode = lambda i: tok.decode([i])
    return KeywordLensResult(
        languages=languages,
        keyword_languages=keyword_languages,
        shares=hit / denom,
        exclusive=excl / denom,
        any_share=any_pl / denom[..., 0],
        text_shares=text_hit / np.maximum(text_n, 1)[:, None],
        positions=positions,
        top_keywords={
            languages[p]: [[(decode(i), n) for i, n in c.most_common(5)] for c in counters[p]] for p in range(P)
        },
        meta={
            "model": model.name,
            "source": model.source,
            "k": k,
            "seq_len": seq_len,
            "texts": {l: len(texts[l]) for l in languages},
            "windows": len(rows),
            "vocab_chunk": vocab_chunk,
            "edited": edits is not None,
            "tagger": tagger.meta,
            "seconds": time.perf_counter() - t0,
            "reference": "cisnlp/code-logitlens (Kargaran et al. 2025): softmax(lm_head(norm(h_l))) top-10, "
            "matched against keyword lists",
        },
    )
