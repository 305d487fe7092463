"""The deactivation perplexity matrix (LAPE, Tang et al. 2024, `ppl.py`; NJUNLP ternary neurons `ppl.py`).

Rows are conditions: `"none"` (no edit) and, for each language k, the model
with language k's neurons set to `edit_value` (0: LAPE's `index_fill_(2, mask, 0)`
after the activation and before `* up`) in every layer at every position.
Columns are the evaluated languages, on held-out text.

Two reporting conventions (methods.md §1.2, §3.4, §10.6):

* **LAPE** (`RUCAIBox/Language-Specific-Neurons ppl.py`): per row (a packed
  4096-token window) the mean NLL over positions 1.., then the mean over rows;
  it prints this **mean NLL** (log-PPL) -> `nll`.
* **NJUNLP** (`NJUNLP/Language-Neurons-Alignment ppl.py`): per prompt the NLL
  `-mean(prompt_logprobs[1:])`, then **`exp` of the mean over prompts** -> `ppl`.

Both average per row first and then over rows; they differ in what a row is
(a packed window with `mode="pack"`, one sentence/prompt with `mode="pad"`) and
in the unit printed. `ppl = exp(nll)` holds for the same rows. The
token-weighted corpus perplexity (`nll_token`: total NLL / total scored tokens)
is reported too; it equals `nll` in pack mode, where every row has
`seq_len - 1` scored tokens. ΔPPL is `ppl[row] - ppl["none"]` per column.

One jitted program serves the whole matrix: each condition is an `Edits` value
of the same shape (see `jlang.models.scoring`).

On several processes (`jlang.parallel.distributed`) the rows are sharded by process
through grain, as in `jlang stats` (`batch_size` is rows per shard); each
process sums NLL and counts over its own rows per column (`nll_partials`), and
the partial sums are added over the shards before the division
(`nll_from_partials`), so every process holds the whole matrix.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jlang import edits as edit_lib
from jlang.data.pipeline import TokenizedCorpus, make_batches, tokenize_corpus
from jlang.data.sources import Corpus
from jlang.io.report import FigureWriter, Report, from_json_matrix, save_heatmaps
from jlang.masks import NeuronMasks
from jlang.models.decoder import Edits
from jlang.models.scoring import Scorer, TokenRows, rows_from_batches
from jlang.models.vocab import DEFAULT_CHUNK
from jlang.parallel import distributed

__all__ = ["PPLResult", "aggregate_nll", "nll_from_partials", "nll_partials", "ppl_matrix"]

NONE = "none"


def nll_partials(logp_sum: np.ndarray, count: np.ndarray, group: np.ndarray, num_groups: int) -> dict[str, np.ndarray]:
    """Per group, the additive parts of `aggregate_nll` (same arguments): sums that add up over any split of the rows.

    Returns:
      row_nll float64 `[G]` (sum of the rows' mean NLL), nll float64 `[G]` (total NLL), tokens int64 `[G]`,
      rows int64 `[G]`.
    """
    logp_sum = np.asarray(logp_sum, np.float64)
    count = np.asarray(count, np.int64)
    keep = count > 0
    g = np.asarray(group)[keep]
    return {
        "row_nll": np.bincount(g, weights=-logp_sum[keep] / count[keep], minlength=num_groups),
        "nll": -np.bincount(g, weights=logp_sum[keep], minlength=num_groups),
        "tokens": np.bincount(g, weights=count[keep], minlength=num_groups).astype(np.int64),
        "rows": np.bincount(g, minlength=num_groups).astype(np.int64),
    }


def nll_from_partials(parts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`aggregate_nll`'s result from (summed) `nll_partials`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        nll = parts["row_nll"] / parts["rows"]
        nll_token = parts["nll"] / parts["tokens"]
    return {"nll": nll, "nll_token": nll_token, "tokens": parts["tokens"], "rows": parts["rows"]}


def aggregate_nll(logp_sum: np.ndarray, count: np.ndarray, group: np.ndarray, num_groups: int) -> dict[str, np.ndarray]:
    """Per group: mean over rows of the row-mean NLL, token-weighted NLL, scored tokens and rows.

    Args:
      logp_sum: float `[N]` summed log-probabilities of each row's scored tokens.
      count: int `[N]` scored tokens per row (rows with 0 are left out).
      group: int `[N]` group (column) of each row.
    Returns:
      nll float64 `[G]` (LAPE / NJUNLP convention), nll_token `[G]`, tokens int64 `[G]`, rows int64 `[G]`
      (NaN where a group has no scored token).
    """
    return nll_from_partials(nll_partials(logp_sum, count, group, num_groups))


@dataclass
class PPLResult(Report):
    """A deactivation perplexity matrix: rows = conditions (`"none"` first), columns = evaluated languages.

    Attributes:
      rows: `["none", k1, k2, ...]`, the deactivated language of each row.
      columns: evaluated languages.
      nll: float64 `[R, C]` mean over rows of the per-row mean NLL (LAPE prints this).
      nll_token: float64 `[R, C]` total NLL / total scored tokens.
      tokens, sequences: int64 `[C]` scored tokens and rows (sentences or windows) per column.
      meta: model, masks, corpus, mode, edit value, timings.
    """

    rows: list[str]
    columns: list[str]
    nll: np.ndarray
    nll_token: np.ndarray
    tokens: np.ndarray
    sequences: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def ppl(self) -> np.ndarray:
        """`exp(nll)` `[R, C]` (NJUNLP prints this)."""
        return np.exp(self.nll)

    @property
    def ppl_token(self) -> np.ndarray:
        return np.exp(self.nll_token)

    def _none(self) -> int:
        if NONE not in self.rows:
            raise ValueError("this matrix has no 'none' row to compare against")
        return self.rows.index(NONE)

    @property
    def delta_ppl(self) -> np.ndarray:
        """`ppl[row] - ppl[none]` `[R, C]`."""
        return self.ppl - self.ppl[self._none()]

    @property
    def delta_nll(self) -> np.ndarray:
        """`nll[row] - nll[none]` `[R, C]` (= log of the PPL ratio)."""
        return self.nll - self.nll[self._none()]

    def deactivated(self) -> list[str]:
        return [r for r in self.rows if r != NONE]

    def diagonal_dominance(self, which: str = "delta_ppl") -> dict[str, Any]:
        """For each deactivated language k that is also a column: `Δ[k, k]` against the other cells.

        Per language: `own` = Δ[k, k]; `max_other`/`mean_other` over the row (k's deactivation on the
        other languages j != k); `ratio_max` = own / max_other; `row_dominant` = own > every other cell of
        the row; `col_dominant` = own > every other deactivation's Δ on column k. Summary: how many
        languages are row/column dominant, and the median ratios. `which` = "delta_ppl" or "delta_nll".
        """
        delta = getattr(self, which)
        per: dict[str, dict[str, float]] = {}
        for k in self.deactivated():
            if k not in self.columns:
                continue
            i, j = self.rows.index(k), self.columns.index(k)
            own = float(delta[i, j])
            others = np.delete(delta[i], j)
            col = np.array([delta[self.rows.index(r), j] for r in self.deactivated() if r != k])
            per[k] = {
                "own": own,
                "max_other": float(np.max(others)) if others.size else float("nan"),
                "mean_other": float(np.mean(others)) if others.size else float("nan"),
                "ratio_max": own / float(np.max(others)) if others.size and np.max(others) > 0 else float("inf"),
                "ratio_mean": own / float(np.mean(others)) if others.size and np.mean(others) > 0 else float("inf"),
                "row_dominant": bool(others.size == 0 or own > np.max(others)),
                "col_dominant": bool(col.size == 0 or own > np.max(col)),
            }
        ratios_max = [v["ratio_max"] for v in per.values()]
        ratios_mean = [v["ratio_mean"] for v in per.values()]
        return {
            "measure": which,
            "per_language": per,
            "row_dominant": sum(v["row_dominant"] for v in per.values()),
            "col_dominant": sum(v["col_dominant"] for v in per.values()),
            "languages": len(per),
            "median_ratio_max": float(np.median(ratios_max)) if per else float("nan"),
            "median_ratio_mean": float(np.median(ratios_mean)) if per else float("nan"),
        }

    # -- persistence -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "jlang.PPLResult/1",
            "rows": self.rows,
            "columns": self.columns,
            "nll": self.nll,
            "ppl": self.ppl,
            "nll_token": self.nll_token,
            "ppl_token": self.ppl_token,
            "delta_ppl": self.delta_ppl if NONE in self.rows else None,
            "delta_nll": self.delta_nll if NONE in self.rows else None,
            "tokens": self.tokens,
            "sequences": self.sequences,
            "conventions": {
                "nll": "LAPE ppl.py: mean over rows of the per-row mean NLL (positions 1..), printed as NLL",
                "ppl": "NJUNLP ppl.py: exp(mean over prompts of the per-prompt NLL)",
                "nll_token": "total NLL / total scored tokens",
            },
            "diagonal_dominance": self.diagonal_dominance() if NONE in self.rows else None,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PPLResult:
        return cls(
            rows=list(d["rows"]),
            columns=list(d["columns"]),
            nll=from_json_matrix(d["nll"]),
            nll_token=from_json_matrix(d["nll_token"]),
            tokens=np.asarray(d["tokens"], np.int64),
            sequences=np.asarray(d["sequences"], np.int64),
            meta=dict(d.get("meta", {})),
        )

    def figures(self) -> dict[str, FigureWriter]:
        """`{prefix}.png`: ΔPPL and ΔNLL heat maps of the deactivated rows (none without a "none" row)."""
        if not self.deactivated() or NONE not in self.rows:
            return {}
        return {"": functools.partial(plot_delta, self)}

    def table(self, which: str = "delta_ppl", fmt: str = "{:.2f}") -> str:
        """A markdown table of `which` ("ppl", "nll", "delta_ppl", "delta_nll", ...)."""
        m = getattr(self, which)
        lines = ["| " + " | ".join([which] + self.columns) + " |", "|---" + "|---:" * len(self.columns) + "|"]
        for i, r in enumerate(self.rows):
            lines.append("| " + " | ".join([r] + [fmt.format(x) for x in m[i]]) + " |")
        return "\n".join(lines)


def plot_delta(result: PPLResult, path: Path) -> Path:
    """ΔPPL (symmetric log colours) and ΔNLL heat maps: deactivated language x evaluated language."""
    rows = result.deactivated()
    idx = [result.rows.index(r) for r in rows]
    axes = {"rows": rows, "cols": result.columns, "xlabel": "evaluated language", "ylabel": "deactivated language"}
    panels = [
        dict(
            matrix=result.delta_ppl[idx],
            title=f"{result.meta.get('model', '')}: ΔPPL = PPL − PPL(none) (symmetric log colours)",
            cbar_label="ΔPPL",
            fmt="{:.1f}",
            diverging=True,
            symlog=1.0,
            **axes,
        ),
        dict(
            matrix=result.delta_nll[idx],
            title="ΔNLL = log(PPL / PPL_none)",
            cbar_label="ΔNLL (nats)",
            fmt="{:.2f}",
            diverging=True,
            **axes,
        ),
    ]
    size = (0.55 * len(result.columns) + 2.5, 0.45 * len(rows) + 2)
    return save_heatmaps(path, panels, ncols=2, panel_size=size)


def _check_languages(
    masks: NeuronMasks, corpus_languages: Sequence[str], languages, deactivate
) -> tuple[list[str], list[str]]:
    columns = list(languages) if languages is not None else [l for l in masks.languages if l in corpus_languages]
    missing = [l for l in columns if l not in corpus_languages]
    if missing:
        raise ValueError(f"languages {missing} are not in the corpus; it has {list(corpus_languages)}")
    if not columns:
        raise ValueError(f"no language is both in the masks {masks.languages} and the corpus {list(corpus_languages)}")
    rows = list(deactivate) if deactivate is not None else [l for l in masks.languages if l in columns]
    for r in rows:
        masks.index(r)  # raises UnknownLanguageError naming the mask's languages
    return columns, rows


def plain_text_rows(
    model,
    corpus: Corpus,
    columns: Sequence[str],
    *,
    batch_size: int,
    seq_len: int,
    mode: str,
    max_tokens: int | None,
    add_bos: bool | None,
    progress: bool,
) -> tuple[TokenizedCorpus, TokenRows]:
    """The tokenized corpus and this data shard's rows of plain text (`make_batches` rows, group = column)."""
    tok = tokenize_corpus(corpus, model.tokenizer, languages=list(columns), add_bos=add_bos, progress=progress)
    paired = [l for l in columns if tok.has_pairs.get(l)]
    if paired:
        raise ValueError(
            f"languages {paired} hold (prompt, response) pairs; ppl_matrix scores plain text (one text per line)"
        )
    shard, shards = distributed.data_shard(model.mesh)  # several processes: each scores its grain shard of the rows
    batches = make_batches(
        tok,
        batch_size=batch_size,
        seq_len=seq_len,
        mode=mode,
        max_tokens=max_tokens,
        process_index=shard,
        process_count=shards,
    )
    rows = rows_from_batches(batches)
    per_column = np.bincount(rows.group, weights=rows.scored_counts(), minlength=len(columns))
    empty = [l for l, n in zip(columns, distributed.sum_over_shards(per_column, model.mesh)) if n == 0]
    if empty:
        raise ValueError(
            f"languages {empty} have no token to score (every text tokenizes to at most one token); "
            "check the corpus and the tokenizer"
        )
    return tok, rows


def condition_partials(
    model,
    rows: TokenRows,
    num_columns: int,
    conditions: Sequence[tuple[str, Edits | None]],
    *,
    batch_size: int,
    vocab_chunk: int,
    progress: bool,
) -> dict[str, np.ndarray]:
    """`nll_partials` `[R, C]` of every condition (name, edits; None = no edit), summed over the data shards."""
    scorer = Scorer(model, vocab_chunk=vocab_chunk)
    plan = scorer.plan(rows, batch_size, sharded=True)  # a collective: every process, before any progress bar
    counts = rows.scored_counts()
    bar = tqdm(total=len(conditions) * len(plan), desc="ppl matrix", unit="batch", disable=not progress)
    parts = []  # this shard's nll_partials per condition
    for name, edits in conditions:
        sums = scorer.row_sums(rows, edits, batch_size=batch_size, progress=bar, sharded=True, plan=plan)
        parts.append(nll_partials(sums, counts, rows.group, num_columns))
        bar.set_postfix(row=name)
    bar.close()
    return {k: distributed.sum_over_shards(np.stack([p[k] for p in parts]), model.mesh) for k in parts[0]}


def ppl_matrix(
    model,
    masks: NeuronMasks,
    corpus,
    *,
    languages: Sequence[str] | None = None,
    deactivate: Sequence[str] | None = None,
    batch_size: int = 16,
    seq_len: int = 128,
    mode: str = "pad",
    edit_value: float = 0.0,
    vocab_chunk: int = DEFAULT_CHUNK,
    max_tokens: int | None = None,
    add_bos: bool | None = None,
    progress: bool = True,
) -> PPLResult:
    """Perplexity of each language with each language's neurons deactivated.

    Args:
      model: a `jlang.Model`.
      masks: `NeuronMasks` of this model (checked against its layers x neurons).
      corpus: a `Corpus` (e.g. `Corpus.default(split="heldout")`) or mapping language -> source of plain text.
      languages: evaluated languages (columns); default: the masks' languages found in the corpus.
      deactivate: deactivated languages (rows after "none"); default: the masks' languages among `languages`.
      batch_size, seq_len: rows per forward (per data shard on several processes, as in `jlang stats`) and the
        longest row (longer texts are truncated in pad mode; pack mode cuts windows of `seq_len`).
      mode: "pad" (one sentence per row: NJUNLP's prompts) or "pack" (LAPE's concatenated windows).
      edit_value: the value deactivated neurons are set to (LAPE: 0).
      vocab_chunk: vocabulary chunk of the log-softmax.
      max_tokens: per-language token cap (see `make_batches`).
    """
    if not isinstance(corpus, Corpus):
        corpus = Corpus(corpus)
    columns, deact = _check_languages(masks, corpus.languages, languages, deactivate)
    masks.check_fits(model.num_layers, model.num_neurons, model=model.name)
    t0 = time.perf_counter()
    tok, rows = plain_text_rows(
        model,
        corpus,
        columns,
        batch_size=batch_size,
        seq_len=seq_len,
        mode=mode,
        max_tokens=max_tokens,
        add_bos=add_bos,
        progress=progress,
    )
    prep_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    conditions = [(NONE, None)] + [(r, edit_lib.deactivate(masks, r, value=edit_value)) for r in deact]
    total = condition_partials(
        model, rows, len(columns), conditions, batch_size=batch_size, vocab_chunk=vocab_chunk, progress=progress
    )
    agg = nll_from_partials(total)
    return PPLResult(
        rows=[name for name, _ in conditions],
        columns=columns,
        nll=agg["nll"],
        nll_token=agg["nll_token"],
        tokens=agg["tokens"][0],
        sequences=agg["rows"][0],
        meta={
            "model": model.name,
            "source": model.source,
            "masks": masks.meta.get("method"),
            "mask_languages": masks.languages,
            "neurons_per_language": {l: int(masks[l].sum()) for l in deact},
            "mode": mode,
            "seq_len": seq_len,
            "batch_size": batch_size,
            "edit_value": edit_value,
            "vocab_chunk": vocab_chunk,
            "max_tokens": max_tokens,
            "add_bos": tok.add_bos,
            "processes": jax.process_count(),
            "batch_shards": distributed.data_shard(model.mesh)[1],
            "corpus": {l: corpus[l].describe() for l in columns},
            "seconds": {"tokenize": prep_s, "score": time.perf_counter() - t1},
            "reference": "LAPE ppl.py (Tang et al. 2024); NJUNLP ppl.py (Zhang et al. 2025)",
        },
    )
