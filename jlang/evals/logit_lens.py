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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jlang import parallel
from jlang.data.sources import Corpus, read_documents
from jlang.edits import identity
from jlang.evals.token_lang import TokenTagger
from jlang.io.report import FigureWriter, Report, save_heatmaps
from jlang.models.decoder import Edits, final_norm, forward
from jlang.models.scoring import TokenRows, bos_ids, place_token_rows, plan_batches, rows_from_token_lists
from jlang.models.vocab import DEFAULT_CHUNK, top_k
from jlang.parallel.batch_loop import pipelined

__all__ = ["LensResult", "VARIANTS", "dispatch_lens", "layer_panel", "lens_rows", "lens_top_k", "logit_lens"]

VARIANTS = ("final_norm", "raw")
# A batch plan: (row indices, width) per batch (`jlang.models.scoring.plan_batches`).
Plan = Sequence[tuple[np.ndarray, int]]


@functools.partial(jax.jit, static_argnames=("cfg", "k", "chunk", "where", "variants"))
def _lens_step(params, ids, positions, valid, edits, *, cfg, k: int, chunk: int, where: str, variants: tuple[str, ...]):
    """Top-k ids per layer: variant ("final_norm", "raw") -> int32 `[L, batch, seq or 1, k]`.

    One jitted function keyed by its static arguments: every batch and call of the same shapes reuses
    the compiled program."""

    def probe(points, valid_):
        x = points["resid.post"]
        if where == "last":
            t = x.shape[1]
            last = jnp.max(jnp.where(valid_, jnp.arange(t), 0), axis=1)
            x = jnp.take_along_axis(x, last[:, None, None], axis=1)
        raw = (lambda: x @ params["project_out"]) if cfg.embed_dim is not None else (lambda: x)  # OPT-350m
        decoded = {"final_norm": lambda: final_norm(params, x, cfg), "raw": raw}
        return {v: top_k(params, decoded[v](), cfg, k, chunk)[1] for v in variants}

    _, out = forward(params, ids, cfg, positions=positions, valid=valid, edits=edits, probe=probe, output="none")
    return out


def dispatch_lens(
    model,
    ids: np.ndarray,
    valid: np.ndarray,
    *,
    k: int = 10,
    where: str = "all",
    vocab_chunk: int = DEFAULT_CHUNK,
    edits: Edits | None = None,
    variants: Sequence[str] = VARIANTS,
) -> dict[str, jax.Array]:
    """Enqueue the lens of one batch (`lens_top_k`) and return at once: variant -> device int32
    `[L, rows', seq|1, k]` (rows padded to the mesh; the same rows on every process)."""
    if where not in ("all", "last"):
        raise ValueError(f"where must be 'all' or 'last', got {where!r}")
    variants = tuple(variants)
    if not variants or set(variants) - set(VARIANTS):
        raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {variants!r}")
    if edits is None:
        edits = identity((model.num_layers, model.num_neurons))
    placed = place_token_rows(model, ids, valid)
    return _lens_step(
        model.params, *placed, edits, cfg=model.config, k=k, chunk=vocab_chunk, where=where, variants=variants
    )


def lens_on_host(out: dict[str, jax.Array], rows: int) -> dict[str, np.ndarray]:
    """`dispatch_lens` output on the host, its first `rows` rows: variant -> int32 `[L, rows, seq|1, k]`."""
    return {v: parallel.to_host(x)[:, :rows] for v, x in out.items()}


def lens_top_k(model, ids: np.ndarray, valid: np.ndarray, **lens: Any) -> dict[str, np.ndarray]:
    """Top-k token ids of every layer's residual stream for one batch: variant -> int32 `[L, batch, seq|1, k]`.

    ids int `[batch, seq]`, valid bool `[batch, seq]`; `lens`: `dispatch_lens`'s keyword arguments (`k`, `where`,
    `vocab_chunk`, `edits`, and `variants`, the decodings ("final_norm", "raw"), each one unembedding per layer).
    """
    return lens_on_host(dispatch_lens(model, ids, valid, **lens), len(ids))


def lens_rows(
    model,
    rows: TokenRows,
    plan: Plan,
    fold_row: Callable[[int, dict[str, np.ndarray], np.ndarray], None],
    *,
    batch_size: int,
    desc: str,
    progress: bool = True,
    **lens: Any,
) -> None:
    """The lens over `rows`, batch by batch (`plan`), one batch dispatched ahead of the host's counting.

    Calls `fold_row(row, top, valid)` for every row of every batch: `top` variant -> int32 `[L, seq|1, k]`,
    `valid` bool `[seq]` its real tokens. `lens`: `dispatch_lens`'s keyword arguments.
    """
    bar = tqdm(total=len(plan), desc=desc, unit="batch", disable=not progress)

    def dispatch(batch: tuple[np.ndarray, int]):
        idx, width = batch
        ids, valid = rows.batch(idx, width, batch_size)  # one compiled batch size
        return dispatch_lens(model, ids, valid, **lens), valid

    def fold(_: int, batch: tuple[np.ndarray, int], out) -> None:
        device, valid = out
        idx = batch[0]
        top = lens_on_host(device, len(idx))
        for r, row in enumerate(idx):
            fold_row(int(row), {v: t[:, r] for v, t in top.items()}, valid[r])
        bar.update(1)

    pipelined(plan, dispatch, fold)
    bar.close()


@dataclass
class LensResult(Report):
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

    def figures(self) -> dict[str, FigureWriter]:
        """`{prefix}.png`: own-language share, layer x language, both variants; `{prefix}_labels.png`: every
        label's share per layer, one panel per prompt language, with the final norm."""
        return {"": functools.partial(plot_own_share, self), "labels": functools.partial(plot_labels, self)}


def layer_panel(matrix: np.ndarray, cols: Sequence[str], *, title: str, xlabel: str, **options: Any) -> dict:
    """A `draw_heatmap` panel of shares `[L, len(cols)]`, layers bottom to top."""
    layers = [str(l) for l in range(matrix.shape[0])]
    return dict(
        matrix=matrix,
        rows=layers,
        cols=list(cols),
        vmin=0.0,
        title=title,
        cbar_label="share",
        xlabel=xlabel,
        ylabel="layer",
        origin="lower",
        **options,
    )


def plot_own_share(result: LensResult, path: Path) -> Path:
    """The prompt's own language among the top-k, layer x prompt language, with and without the final norm."""
    k = result.meta.get("k")
    norm = {"final_norm": "with final norm", "raw": "no final norm"}
    panels = [
        layer_panel(
            result.own_share(v),
            result.languages,
            title=f"prompt's language in top-{k}\n({norm[v]})",
            xlabel="prompt language",
            vmax=1.0,
            fmt="{:.2f}",
        )
        for v in VARIANTS
    ]
    size = (0.5 * len(result.languages) + 3, 0.3 * result.shares.shape[2] + 2)
    return save_heatmaps(path, panels, ncols=2, panel_size=size)


def plot_labels(result: LensResult, path: Path) -> Path:
    """Every label's share among the top-k per layer (final norm), one panel per prompt language."""
    k = result.meta.get("k")
    panels = [
        layer_panel(
            result.shares[p, 0],
            result.labels,
            title=f"prompts in {lang}: top-{k} labels (final norm)",
            xlabel="token label",
            vmax=1.0,
            annotate=False,
        )
        for p, lang in enumerate(result.languages)
    ]
    size = (0.35 * len(result.labels) + 2.5, 0.22 * result.shares.shape[2] + 2)
    return save_heatmaps(path, panels, ncols=4, panel_size=size)


def first_text_rows(tokenizer, corpus: Corpus, languages: Sequence[str], max_texts: int, seq_len: int) -> TokenRows:
    """The first `max_texts` texts of each language, BOS first, cut to `seq_len` tokens (group = language index)."""
    bos = bos_ids(tokenizer)
    token_lists, groups = [], []
    for p, lang in enumerate(languages):
        texts = [d for d in read_documents(corpus[lang]) if isinstance(d, str)][:max_texts]
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            token_lists.append((bos + list(ids))[:seq_len])
            groups.append(p)
    return rows_from_token_lists(token_lists, [0] * len(token_lists), groups, pad_id=tokenizer.pad_token_id or 0)


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
    if not isinstance(corpus, Corpus):
        corpus = Corpus(corpus)
    languages = list(languages or corpus.languages)
    if tagger is None:
        tagger = TokenTagger.from_tokenizer(model.tokenizer, languages, vocab_size=model.config.vocab_size)
    if len(tagger.tags) != model.config.vocab_size:
        raise ValueError(f"the tagger covers {len(tagger.tags)} tokens but the model has {model.config.vocab_size}")
    t0 = time.perf_counter()
    tok = model.tokenizer
    rows = first_text_rows(tok, corpus, languages, max_texts, seq_len)
    L, P, nl = model.num_layers, len(languages), len(tagger.labels)
    counts = np.zeros((P, len(VARIANTS), L, nl), np.float64)
    positions = np.zeros(P, np.int64)
    top1 = {p: {v: [collections.Counter() for _ in range(L)] for v in VARIANTS} for p in range(P)}

    def fold_row(row: int, top: dict[str, np.ndarray], valid: np.ndarray) -> None:
        p = int(rows.group[row])
        keep = valid if where == "all" else np.ones(1, bool)
        positions[p] += int(keep.sum())
        for vi, v in enumerate(VARIANTS):
            sel = top[v][:, keep]  # [L, n, k]
            tags = tagger.tags[sel]  # [L, n, k]
            for l in range(L):
                counts[p, vi, l] += np.bincount(tags[l].ravel(), minlength=nl)
                top1[p][v][l].update(sel[l, :, 0].tolist())

    plan = plan_batches(rows.lengths, batch_size, rows.ids.shape[1])
    lens = {"k": k, "where": where, "vocab_chunk": vocab_chunk, "edits": edits}
    lens_rows(model, rows, plan, fold_row, batch_size=batch_size, desc="logit lens", progress=progress, **lens)
    decode = lambda i: tok.decode([i])
    return LensResult(
        languages=languages,
        labels=list(tagger.labels),
        shares=counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1),
        positions=positions,
        top1={
            languages[p]: {v: [[(decode(i), n) for i, n in c.most_common(5)] for c in top1[p][v]] for v in VARIANTS}
            for p in range(P)
        },
        meta={
            "model": model.name,
            "source": model.source,
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
