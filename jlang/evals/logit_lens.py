"""Logit lens: decode every layer's residual stream and count the languages of its top-k tokens.

For each layer l, the residual stream after the layer (`resid.post`) is
unembedded (a) after the model's final norm, as Aya-23's `logit_lens.py` and
`cisnlp/code-logitlens` do (`lm_head(model.norm(h_l))`, methods.md §8.1, §9.4),
and (b) without it, as the PLND code does. The top-k token ids per position are
computed inside the jitted forward, in vocabulary chunks
(`jlang.models.vocab.top_k`), by a probe on `resid.post`: only `[L, batch, seq, k]`
ids leave the device, never logits.

Positions: `where="all"` decodes every real position of every text (code-logitlens);
`where="last"` only each text's last token (Aya-23 reads the last prompt token).
The ids are tagged with a language by `jlang.evals.token_lang.TokenTagger`; the
result is the share of each label among the top-k tokens, per prompt language,
layer and variant. At the last layer with the final norm, the lens is the
model's own next-token top-k.

On several processes (`jlang.parallel.distributed`) every process builds the same rows;
each batch is split over all devices and gathered back, so every process counts
the same ids as a single-process run.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlang import parallel
from jlang.evals.token_lang import TokenTagger
from jlang.io.report import save_heatmaps, write_json
from jlang.models.decoder import Edits, forward, rms_norm
from jlang.models.scoring import plan_batches, rows_from_token_lists
from jlang.models.vocab import DEFAULT_CHUNK, top_k
from jlang.parallel import distributed

__all__ = ["LensResult", "VARIANTS", "lens_top_k", "logit_lens"]

VARIANTS = ("final_norm", "raw")


def _lens_step(params, ids, positions, valid, edits, *, cfg, k: int, chunk: int, where: str, variants: tuple[str, ...]):
    """Top-k ids per layer: variant ("final_norm", "raw") -> int32 `[L, batch, seq or 1, k]`."""

    def probe(points, valid_):
        x = points["resid.post"]
        if where == "last":
            t = x.shape[1]
            last = jnp.max(jnp.where(valid_, jnp.arange(t), 0), axis=1)
            x = jnp.take_along_axis(x, last[:, None, None], axis=1)
        decoded = {"final_norm": lambda: rms_norm(x, params["final_norm"], cfg), "raw": lambda: x}
        return {v: top_k(params, decoded[v](), cfg, k, chunk)[1] for v in variants}

    _, out = forward(params, ids, cfg, positions=positions, valid=valid, edits=edits, probe=probe, output="none")
    return out


def lens_top_k(
    model,
    ids: np.ndarray,
    valid: np.ndarray,
    *,
    k: int = 10,
    where: str = "all",
    vocab_chunk: int = DEFAULT_CHUNK,
    edits: Edits | None = None,
    variants: Sequence[str] = VARIANTS,
    _cache: dict | None = None,
) -> dict[str, np.ndarray]:
    """Top-k token ids of every layer's residual stream for one batch: variant -> int32 `[L, batch, seq|1, k]`.

    `variants` picks the decodings ("final_norm", "raw"); each costs one unembedding per layer."""
    if where not in ("all", "last"):
        raise ValueError(f"where must be 'all' or 'last', got {where!r}")
    variants = tuple(variants)
    if not variants or set(variants) - set(VARIANTS):
        raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {variants!r}")
    key = (k, where, vocab_chunk, variants)
    cache = _cache if _cache is not None else {}
    if key not in cache:
        cache[key] = jax.jit(
            functools.partial(_lens_step, cfg=model.config, k=k, chunk=vocab_chunk, where=where, variants=variants)
        )
    if edits is None:
        from jlang.edits import identity

        edits = identity((model.num_layers, model.num_neurons))
    ids = model.check_ids(ids)
    b, t = ids.shape
    rows = parallel.pad_batch_to(b, model.mesh)
    valid = np.asarray(valid, bool)
    if rows != b:
        ids = np.concatenate([ids, np.zeros((rows - b, t), np.int32)])
        valid = np.concatenate([valid, np.zeros((rows - b, t), bool)])
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), ids.shape).copy()
    place = functools.partial(distributed.place_whole_batch, model)  # the same rows on every process
    out = cache[key](model.params, place(ids), place(positions), place(valid), edits)
    return {v: parallel.to_host(out[v])[:, :b] for v in variants}


@dataclass
class LensResult:
    """Language shares of the logit lens.

    Attributes:
      languages: prompt languages (one panel each).
      labels: token labels of the tagger (languages, "Latin?", "Han?", "other", "none").
      shares: float64 `[P, 2, L, num_labels]`: share of each label among the top-k ids, per prompt
        language, variant (`VARIANTS`: with the final norm, raw) and layer.
      positions: int64 `[P]` decoded positions per prompt language.
      top1: prompt language -> variant -> per layer the 5 most frequent top-1 tokens (decoded, with counts).
    """

    languages: list[str]
    labels: list[str]
    shares: np.ndarray
    positions: np.ndarray
    top1: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def own_share(self, variant: str = "final_norm") -> np.ndarray:
        """float64 `[L, P]`: share of the prompt's own language among the top-k ids (NaN if not a label)."""
        v = VARIANTS.index(variant)
        out = np.full((self.shares.shape[2], len(self.languages)), np.nan)
        for p, lang in enumerate(self.languages):
            if lang in self.labels:
                out[:, p] = self.shares[p, v, :, self.labels.index(lang)]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "jlang.LensResult/1",
            "languages": self.languages,
            "labels": self.labels,
            "variants": list(VARIANTS),
            "shares": self.shares,
            "positions": self.positions,
            "own_share": {v: self.own_share(v) for v in VARIANTS},
            "top1": self.top1,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d) -> LensResult:
        return cls(
            languages=list(d["languages"]),
            labels=list(d["labels"]),
            shares=np.array(d["shares"], dtype=object).astype(np.float64),
            positions=np.asarray(d["positions"], np.int64),
            top1=d.get("top1", {}),
            meta=dict(d.get("meta", {})),
        )

    def save(self, path_prefix: str | Path) -> dict[str, Path]:
        """`{prefix}.json`, `{prefix}.png` (own-language share, layer x language, both variants) and
        `{prefix}_labels.png` (every label's share per layer, one panel per prompt language, with final norm)."""
        prefix = Path(path_prefix)
        out = {"json": write_json(prefix.with_name(prefix.name + ".json"), self.to_dict())}
        L = self.shares.shape[2]
        layers = [str(l) for l in range(L)]
        panels = [
            dict(
                matrix=self.own_share(v),
                rows=layers,
                cols=self.languages,
                vmin=0.0,
                vmax=1.0,
                title=f"prompt's language in top-{self.meta.get('k')}\n({'with final norm' if v == 'final_norm' else 'no final norm'})",
                cbar_label="share",
                fmt="{:.2f}",
                xlabel="prompt language",
                ylabel="layer",
                origin="lower",
            )
            for v in VARIANTS
        ]
        out["png"] = save_heatmaps(
            prefix.with_name(prefix.name + ".png"),
            panels,
            ncols=2,
            panel_size=(0.5 * len(self.languages) + 3, 0.3 * L + 2),
        )
        label_panels = [
            dict(
                matrix=self.shares[p, 0],
                rows=layers,
                cols=self.labels,
                vmin=0.0,
                vmax=1.0,
                annotate=False,
                title=f"prompts in {lang}: top-{self.meta.get('k')} labels (final norm)",
                cbar_label="share",
                xlabel="token label",
                ylabel="layer",
                origin="lower",
            )
            for p, lang in enumerate(self.languages)
        ]
        out["labels_png"] = save_heatmaps(
            prefix.with_name(prefix.name + "_labels.png"),
            label_panels,
            ncols=4,
            panel_size=(0.35 * len(self.labels) + 2.5, 0.22 * L + 2),
        )
        return out


def _texts(corpus, languages: Sequence[str], max_texts: int) -> dict[str, list[str]]:
    from jlang.data.sources import read_documents

    out = {}
    for lang in languages:
        docs = [d for d in read_documents(corpus[lang]) if isinstance(d, str)]
        out[lang] = docs[:max_texts]
    return out


def logit_lens(
    model,
    corpus,
    *,
    languages: Sequence[str] | None = None,
    tagger: TokenTagger | None = None,
    k: int = 10,
    max_texts: int = 16,
    where: str = "all",
    batch_size: int = 8,
    seq_len: int = 64,
    vocab_chunk: int = DEFAULT_CHUNK,
    edits: Edits | None = None,
    progress: bool = True,
) -> LensResult:
    """Logit-lens language shares on the first `max_texts` texts of each language of `corpus`.

    Args:
      corpus: a `Corpus` or mapping language -> source (plain text).
      tagger: the token tagger (default: by script only, over `languages`).
      k: top-k ids per position and layer.
      where: "all" real positions, or the "last" token of each text.
      seq_len: texts are truncated to this many tokens (BOS included).
    """
    from jlang.data.sources import Corpus

    if not isinstance(corpus, Corpus):
        corpus = Corpus(corpus)
    languages = list(languages or corpus.languages)
    if tagger is None:
        tagger = TokenTagger.from_tokenizer(model.tokenizer, languages, vocab_size=model.config.vocab_size)
    if len(tagger.tags) != model.config.vocab_size:
        raise ValueError(f"the tagger covers {len(tagger.tags)} tokens but the model has {model.config.vocab_size}")
    t0 = time.perf_counter()
    texts = _texts(corpus, languages, max_texts)
    tok = model.tokenizer
    bos = [tok.bos_token_id] if getattr(tok, "bos_token_id", None) is not None else []
    token_lists, groups = [], []
    for p, lang in enumerate(languages):
        for ids in tok(texts[lang], add_special_tokens=False)["input_ids"]:
            token_lists.append((bos + list(ids))[:seq_len])
            groups.append(p)
    rows = rows_from_token_lists(token_lists, [0] * len(token_lists), groups, pad_id=tok.pad_token_id or 0)
    L, P, nl = model.num_layers, len(languages), len(tagger.labels)
    counts = np.zeros((P, len(VARIANTS), L, nl), np.float64)
    positions = np.zeros(P, np.int64)
    top1: dict[int, dict[str, list[collections.Counter]]] = {
        p: {v: [collections.Counter() for _ in range(L)] for v in VARIANTS} for p in range(P)
    }
    cache: dict = {}
    plan = plan_batches(rows.lengths, batch_size, rows.ids.shape[1])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc="logit lens", unit="batch")
    for idx, width in plan:
        ids, valid = rows.ids[idx, :width], rows.attend[idx, :width]
        if len(idx) < batch_size:
            pad = batch_size - len(idx)
            ids = np.concatenate([ids, np.zeros((pad, width), np.int32)])
            valid = np.concatenate([valid, np.zeros((pad, width), bool)])
        out = lens_top_k(model, ids, valid, k=k, where=where, vocab_chunk=vocab_chunk, edits=edits, _cache=cache)
        for r, row in enumerate(idx):
            p = int(rows.group[row])
            keep = valid[r] if where == "all" else np.ones(1, bool)
            positions[p] += int(keep.sum())
            for vi, v in enumerate(VARIANTS):
                sel = out[v][:, r][:, keep]  # [L, n, k]
                tags = tagger.tags[sel]  # [L, n, k]
                for l in range(L):
                    counts[p, vi, l] += np.bincount(tags[l].ravel(), minlength=nl)
                    top1[p][v][l].update(sel[l, :, 0].tolist())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    shares = counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1)
    decode = lambda i: tok.decode([i])
    top1_out = {
        languages[p]: {v: [[(decode(i), n) for i, n in c.most_common(5)] for c in top1[p][v]] for v in VARIANTS}
        for p in range(P)
    }
    return LensResult(
        languages=languages,
        labels=list(tagger.labels),
        shares=shares,
        positions=positions,
        top1=top1_out,
        meta={
            "model": model.name,
            "k": k,
            "where": where,
            "max_texts": max_texts,
            "seq_len": seq_len,
            "vocab_chunk": vocab_chunk,
            "edited": edits is not None,
            "tagger": tagger.meta,
            "seconds": time.perf_counter() - t0,
            "reference": "Aya-23 logit_lens.py (final norm); cisnlp/code-logitlens (top-10, all positions); "
            "PLND code (no final norm)",
        },
    )
