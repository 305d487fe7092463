"""`jlang compare`: statistics of two checkpoints on the same token batches, then the comparison and a report.

    base model ──┐                                         ┌─ stats_base.npz, masks_base.npz, ppl_base.json
                 ├─ one tokenization, one batch layout ───┤
    aligned ─────┘   (same corpus, same rows, same order) └─ stats_aligned.npz, masks_aligned.npz, ppl_aligned.json
                                  │
                   jlang.analysis.compare.core.compare ──▶ compare.json, report.md, *.png

The corpus is tokenized once, with the base model's tokenizer; the aligned model
must tokenize identically (checked on sample texts of every language), so both
statistics passes see exactly the same rows. A SHA-256 digest of the token rows
and batch settings is stored in both statistics (`meta["tokens_digest"]`) and
checked by `jlang.analysis.compare.core.check_same_tokens`. The models are loaded one after the
other, so peak memory is one model. With `reuse`, statistics and perplexities
already in `out` that were made with the same settings and the same checkpoints
are loaded instead of recomputed (`settings_key`, `reusable_stats`).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jlang.analysis.compare.core import Comparison, compare
from jlang.analysis.compare.neurons import CompareError
from jlang.analysis.compare.report import write_outputs
from jlang.data.pipeline import tokenize_corpus
from jlang.data.sources import read_documents, resolve_corpus
from jlang.evals.perplexity import PPLResult, ppl_matrix
from jlang.io.report import write_json
from jlang.masks import NeuronMasks
from jlang.methods import ternary
from jlang.models.model import load_model
from jlang.parallel import distributed
from jlang.stats import ActivationStats
from jlang.stats.collect import collect_stats

__all__ = [
    "CompareConfig",
    "PPLOptions",
    "check_same_tokenizer",
    "reusable_nll",
    "reusable_stats",
    "run_compare",
    "settings_key",
    "tokens_digest",
]


@dataclasses.dataclass(frozen=True)
class PPLOptions:
    """Per-language perplexity of both checkpoints (`jlang.evals.perplexity.ppl_matrix`, no edit)."""

    enabled: bool = True
    split: Literal["train", "heldout"] = "train"  # text neither checkpoint was fitted on (see CompareConfig.split)
    mode: Literal["pad", "pack"] = "pad"  # one sentence per row (NJUNLP prompts)
    batch_size: int = 16
    seq_len: int = 64
    max_tokens_per_language: int | None = 1000
    vocab_chunk: int = 16384


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Everything `jlang compare` does; the CLI options and the experiment configs fill it."""

    base: str = "default"  # the model before alignment: "default", "smollm2", an HF dir, a .gguf or a jlang checkpoint
    aligned: str = ""  # the model after alignment (required)
    corpus: str = "default"  # "default" or a directory of {lang}.txt|.jsonl files (with train/ heldout/ splits)
    # `jlang finetune`'s default alignment data are the default corpus's held-out parallel messages, so the
    # train split is the text the aligned checkpoint was not fitted on (the base model saw neither).
    split: Literal["train", "heldout"] = "train"
    languages: tuple[str, ...] | None = None  # default: every language of the corpus
    aligned_languages: tuple[str, ...] | None = None  # languages used in alignment (spontaneous-alignment section)
    out: str = "runs/compare"
    dtype: Literal["float32", "bfloat16"] = "float32"
    mode: Literal["pack", "pad"] = "pack"
    batch_size: int = 8
    seq_len: int = 128
    max_tokens_per_language: int | None = 4000
    add_bos: bool = True
    top_rate: float = 0.01
    lam: float | Literal["auto"] = "auto"
    activation_bar_ratio: float = 0.95
    curve: Literal["both", "divergence", "language_share"] = "both"
    stages: int = 4
    bins: int = 41
    reuse: bool = True  # load {out}/stats_*.npz and ppl_*.json made with the same settings and checkpoints
    ppl: PPLOptions = PPLOptions()


# ----------------------------------------------------------------------------- tokens


def tokens_digest(tokenized, settings: Mapping[str, Any]) -> str:
    """SHA-256 over the languages, every token id, document boundary and counted offset, and the batch settings."""
    h = hashlib.sha256()
    h.update(json.dumps({"languages": list(tokenized.languages), **dict(settings)}, sort_keys=True).encode())
    for lang in tokenized.languages:
        t = tokenized.data[lang]
        for arr in (t.ids, t.offsets, t.counted_from):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def check_same_tokenizer(base_tok, aligned_tok, corpus, languages: Sequence[str], *, samples: int = 3) -> None:
    """The aligned checkpoint's tokenizer must encode the corpus like the base one (sample texts per language)."""
    if aligned_tok is None:
        return  # the base tokenizer is used for both
    if len(base_tok) != len(aligned_tok):
        raise CompareError(
            f"the tokenizers differ: base has {len(base_tok)} tokens, aligned {len(aligned_tok)}; "
            "compare checkpoints of the same model"
        )
    for lang in languages:
        for doc in read_documents(corpus[lang])[:samples]:
            text = doc if isinstance(doc, str) else doc[0] + doc[1]
            a = base_tok(text, add_special_tokens=False)["input_ids"]
            b = aligned_tok(text, add_special_tokens=False)["input_ids"]
            if a != b:
                raise CompareError(
                    f"the tokenizers encode {lang} text {text[:60]!r} differently; compare checkpoints "
                    "that share a tokenizer"
                )


# ----------------------------------------------------------------------------- reusing earlier results


def _checkpoint_id(source: str) -> str:
    """A packaged name, or the resolved path plus its modification time (a re-trained checkpoint differs)."""
    p = Path(source).expanduser()
    if p.exists():
        return f"{p.resolve()}@{p.stat().st_mtime_ns}"
    return source


def settings_key(cfg: CompareConfig, which: str, languages: Sequence[str], *, ppl: bool = False) -> dict[str, Any]:
    """What a stored statistics (or, with `ppl`, perplexity) file must have been made with to be reused.

    `which`: "base" or "aligned", the checkpoint.
    """
    src = cfg.base if which == "base" else cfg.aligned
    key = {
        "checkpoint": _checkpoint_id(src),
        "dtype": cfg.dtype,
        "corpus": cfg.corpus,
        "languages": list(languages),
        "add_bos": cfg.add_bos,
    }
    if ppl:
        return {**key, "ppl": dataclasses.asdict(cfg.ppl)}
    return {
        **key,
        "split": cfg.split,
        "mode": cfg.mode,
        "batch_size": cfg.batch_size,
        "seq_len": cfg.seq_len,
        "max_tokens": cfg.max_tokens_per_language,
    }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def reusable_stats(out: Path, which: str, key: Mapping[str, Any]) -> ActivationStats | None:
    """`{out}/stats_{which}.npz` if it was made with `key` (`settings_key`), else None."""
    path = out / f"stats_{which}.npz"
    if not path.is_file():
        return None
    stats = ActivationStats.load(path)
    return stats if stats.meta.get("compare_key") == _jsonable(key) else None


def reusable_nll(out: Path, which: str, key: Mapping[str, Any]) -> dict[str, float] | None:
    """The per-language NLL of `{out}/ppl_{which}.json` if it was made with `key` (`settings_key(ppl=True)`)."""
    path = out / f"ppl_{which}.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data.get("nll_by_language") if data.get("compare_key") == _jsonable(key) else None


def _ppl_seconds(path: Path) -> float | None:
    """Wall time recorded in a `ppl_*.json` (tokenizing + scoring), if any."""
    secs = json.loads(path.read_text(encoding="utf-8")).get("meta", {}).get("seconds")
    return float(sum(secs.values())) if isinstance(secs, dict) else None


# ----------------------------------------------------------------------------- one checkpoint


@dataclasses.dataclass
class _Pass:
    """What the two checkpoint passes share: the corpora, the one tokenization and its digest, the base tokenizer."""

    cfg: CompareConfig
    corpus: Any
    ppl_corpus: Any
    languages: list[str]
    out: Path
    log: Callable[[str], None]
    progress: bool
    tokenized: Any = None
    digest: str | None = None
    tokenizer: Any = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def masks_kw(self) -> dict[str, Any]:
        return {
            "top_rate": self.cfg.top_rate,
            "lam": self.cfg.lam,
            "activation_bar_ratio": self.cfg.activation_bar_ratio,
        }


def _reused(
    p: _Pass, which: str, key: Mapping[str, Any], ppl_key: Mapping[str, Any]
) -> tuple[ActivationStats | None, dict[str, float] | None]:
    """The statistics and per-language NLL of an earlier run in `out` that may be reused (None where not)."""
    cfg, out = p.cfg, p.out
    stats = reusable_stats(out, which, key) if cfg.reuse else None
    nll = reusable_nll(out, which, ppl_key) if cfg.reuse and cfg.ppl.enabled else None
    for name, hit in ((f"stats_{which}.npz", stats), (f"ppl_{which}.json", nll)):
        if hit is not None:
            p.log(f"{which}: reusing {out / name}")
    if stats is not None and "seconds" in stats.meta:  # keep the wall time of the run that made them
        p.timings[f"statistics {which} (earlier run)"] = float(stats.meta["seconds"])
    if nll is not None:
        earlier = _ppl_seconds(out / f"ppl_{which}.json")
        if earlier is not None:
            p.timings[f"perplexity {which} (earlier run)"] = earlier
    return stats, nll


def _load(p: _Pass, which: str, source: str):
    """The checkpoint's model; its tokenizer must encode the corpus as the base checkpoint's does."""
    t = time.perf_counter()
    # an existing path is made absolute: orbax refuses to restore a jlang checkpoint from a relative one
    local = Path(source).expanduser()
    model = load_model(str(local.resolve()) if local.exists() else source, dtype=p.cfg.dtype, progress=p.progress)
    p.timings[f"load {which}"] = time.perf_counter() - t
    if p.tokenizer is not None:
        check_same_tokenizer(p.tokenizer, model.tokenizer, p.corpus, p.languages)
    elif model.tokenizer is None:
        raise CompareError(f"{source} has no tokenizer; the base checkpoint must bring one")
    p.tokenizer = p.tokenizer or model.tokenizer
    return model


def _collect(p: _Pass, which: str, source: str, model, key: Mapping[str, Any]) -> ActivationStats:
    """The checkpoint's statistics on the one tokenization (made by the first checkpoint that needs it), saved."""
    cfg = p.cfg
    if p.tokenized is None:
        p.tokenized = tokenize_corpus(p.corpus, p.tokenizer, add_bos=cfg.add_bos, progress=p.progress)
        settings = {
            "batch_size": cfg.batch_size,
            "seq_len": cfg.seq_len,
            "mode": cfg.mode,
            "max_tokens": cfg.max_tokens_per_language,
        }
        p.digest = tokens_digest(p.tokenized, settings)
    t = time.perf_counter()
    stats = collect_stats(
        model,
        p.tokenized,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        mode=cfg.mode,
        max_tokens=cfg.max_tokens_per_language,
        progress=p.progress,
    )
    stats.meta.update(
        tokens_digest=p.digest,
        compare_key=_jsonable(key),
        checkpoint=source,
        split=cfg.split,
        corpus={l: p.corpus[l].describe() for l in p.languages},
    )
    p.timings[f"statistics {which}"] = stats.meta["seconds"] = time.perf_counter() - t
    p.log(f"{which}: {int(stats.tokens.sum()):,} tokens counted in {p.timings[f'statistics {which}']:.0f} s")
    if distributed.is_primary():
        stats.save(p.out / f"stats_{which}.npz")
    return stats


def _perplexity(
    p: _Pass, which: str, model, stats: ActivationStats, key: Mapping[str, Any]
) -> tuple[dict[str, float], NeuronMasks]:
    """Mean NLL per language without edits (the "none" row of `ppl_matrix`), saved; and the masks it needed."""
    t = time.perf_counter()
    masks = ternary(stats, **p.masks_kw)  # ppl_matrix wants masks; with no row deactivated they only fix the shape
    opts = p.cfg.ppl
    res: PPLResult = ppl_matrix(
        model,
        masks,
        p.ppl_corpus,
        languages=list(p.languages),
        deactivate=[],
        batch_size=opts.batch_size,
        seq_len=opts.seq_len,
        mode=opts.mode,
        vocab_chunk=opts.vocab_chunk,
        max_tokens=opts.max_tokens_per_language,
        add_bos=p.cfg.add_bos,
        progress=p.progress,
    )
    nll = {c: float(v) for c, v in zip(res.columns, res.nll[0])}
    p.timings[f"perplexity {which}"] = time.perf_counter() - t
    if distributed.is_primary():
        write_json(
            p.out / f"ppl_{which}.json", {**res.to_dict(), "nll_by_language": nll, "compare_key": _jsonable(key)}
        )
    return nll, masks


def _measure(p: _Pass, which: str, source: str) -> tuple[ActivationStats, dict[str, float] | None, NeuronMasks | None]:
    """One checkpoint: (statistics, per-language NLL or None, the masks if computed), reusing files in `out`
    when allowed; the model is loaded only when something is missing."""
    key = settings_key(p.cfg, which, p.languages)  # before loading: the key holds the checkpoint's mtime
    ppl_key = settings_key(p.cfg, which, p.languages, ppl=True)
    stats, nll = _reused(p, which, key, ppl_key)
    need_ppl = p.cfg.ppl.enabled and nll is None
    if stats is not None and not need_ppl:
        return stats, nll, None
    model = _load(p, which, source)
    if stats is None:
        stats = _collect(p, which, source, model, key)
    masks = None
    if need_ppl:
        nll, masks = _perplexity(p, which, model, stats, ppl_key)
    return stats, nll, masks


# ----------------------------------------------------------------------------- the run


def run_compare(
    cfg: CompareConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    title: str | None = None,
    preamble: str = "",
) -> tuple[Comparison, dict[str, Path]]:
    """Collect (or reuse) both checkpoints' statistics and perplexities, compare, and write everything under
    `cfg.out`.

    The models are loaded one after the other (peak memory: one model). `title` and
    `preamble` (markdown placed after the title) go into `report.md`. Returns the
    `Comparison` and the paths written (report, json, plots, statistics, masks).
    """
    log = log or (lambda msg: print(f"[compare] {msg}", flush=True))
    if not cfg.aligned:
        raise CompareError("no aligned checkpoint given (--aligned / aligned:)")
    if cfg.stages < 1:
        raise CompareError(f"stages must be >= 1, got {cfg.stages}")
    corpus = resolve_corpus(cfg.corpus, cfg.languages, cfg.split)  # a bad corpus fails before any model loads
    languages = list(corpus.languages)
    if len(languages) < 2:
        raise CompareError(f"the comparison needs at least 2 languages, got {languages}")
    unknown = [l for l in cfg.aligned_languages or () if l not in languages]
    if unknown:
        raise CompareError(
            f"aligned languages {unknown} are not among the compared languages {languages}; add them with --languages"
        )
    ppl_corpus = resolve_corpus(cfg.corpus, languages, cfg.ppl.split) if cfg.ppl.enabled else None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    p = _Pass(cfg, corpus, ppl_corpus, languages, out, log, progress)
    stats, nll, masks = {}, {}, {}
    for which, source in (("base", cfg.base), ("aligned", cfg.aligned)):
        stats[which], nll[which], masks[which] = _measure(p, which, source)
        gc.collect()  # drop this checkpoint's parameters before the next one loads

    t = time.perf_counter()
    masks = {w: m if m is not None else ternary(stats[w], **p.masks_kw) for w, m in masks.items()}
    result = compare(
        stats["base"],
        stats["aligned"],
        base_masks=masks["base"],
        aligned_masks=masks["aligned"],
        aligned_languages=cfg.aligned_languages,
        nll_base=nll["base"],
        nll_aligned=nll["aligned"],
        curve=cfg.curve,
        num_stages=cfg.stages,
        bins=cfg.bins,
        **p.masks_kw,
        meta={
            "base": cfg.base,
            "aligned": cfg.aligned,
            "corpus": cfg.corpus,
            "split": cfg.split,
            "mode": cfg.mode,
            "seq_len": cfg.seq_len,
            "max_tokens_per_language": cfg.max_tokens_per_language,
            "ppl": dataclasses.asdict(cfg.ppl) if cfg.ppl.enabled else None,
            "tokens_digest": stats["base"].meta.get("tokens_digest"),
        },
    )
    p.timings["compare"] = time.perf_counter() - t
    result.meta["seconds"] = p.timings
    paths: dict[str, Path] = {}
    if distributed.is_primary():
        paths = {f"masks_{w}": masks[w].save(out / f"masks_{w}.npz") for w in ("base", "aligned")}
        paths.update(write_outputs(result, out, title=title, preamble=preamble))
        paths.update(stats_base=out / "stats_base.npz", stats_aligned=out / "stats_aligned.npz")
    return result, paths
