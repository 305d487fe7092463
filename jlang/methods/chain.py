"""The whole LAPE chain of `jlang run CONFIG`: corpus -> statistics -> masks -> heat map and summary.

Every output goes under `config.out`:

    config.yaml     the resolved config (what actually ran)
    stats.npz       ActivationStats (counts, sums, max per language x layer x neuron)
    masks.npz       NeuronMasks (NumPy-only .npz; `jlang export` writes the LAPE .pt)
    masks.png       neurons per layer x language
    summary.md      tokens per language, neurons per language, overlaps, wall times
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import numpy as np
import yaml

import jlang
from jlang import config as config_lib
from jlang.data.sources import resolve_corpus
from jlang.io.atomic import output_path
from jlang.io.report import write_text
from jlang.masks import NeuronMasks
from jlang.methods import lape, ternary
from jlang.parallel import distributed
from jlang.stats import ActivationStats
from jlang.stats.collect import collect_stats


def identify(
    stats: ActivationStats, cfg: config_lib.IdentifySection, prompt_stats: ActivationStats | None = None
) -> NeuronMasks:
    if cfg.method == "lape":
        return lape(
            stats, top_rate=cfg.top_rate, filter_rate=cfg.filter_rate, activation_bar_ratio=cfg.activation_bar_ratio
        )
    return ternary(
        stats,
        prompt_stats=prompt_stats,
        top_rate=cfg.top_rate,
        lam=cfg.lam,
        activation_bar_ratio=cfg.activation_bar_ratio,
    )


def summary_markdown(stats: ActivationStats, masks: NeuronMasks, timings: Mapping[str, float], cfg) -> str:
    counts = masks.counts()  # [K, L]
    lines = [
        f"# Language-specific neurons: {stats.meta.get('model', cfg.model.source)}",
        "",
        f"Method `{masks.meta.get('method')}`, hook point `{stats.meta.get('hook_point', 'mlp.act')}`, "
        f"{stats.num_layers} layers x {stats.num_neurons} neurons; {masks.unique_count()} unique neurons selected.",
        "",
        "| language | tokens | neurons | top layers |",
        "|---|---:|---:|---|",
    ]
    for k, lang in enumerate(masks.languages):
        top = np.argsort(-counts[k], kind="stable")[:3]
        top_layers = ", ".join(f"L{l} ({counts[k, l]})" for l in top)
        lines.append(f"| {lang} | {int(stats.tokens[k]):,} | {int(counts[k].sum()):,} | {top_layers} |")
    jac = masks.jaccard()
    off = jac[~np.eye(len(jac), dtype=bool)]
    lines += [
        "",
        f"Mean Jaccard overlap between languages: {np.nanmean(off):.3f} (max {np.nanmax(off):.3f}).",
        "",
        "Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ".",
        "",
        "![neurons per layer and language](masks.png)",
    ]
    return "\n".join(lines) + "\n"


def run_lape(cfg: config_lib.RunConfig, *, progress: bool = True) -> dict:
    """Run the chain; return the paths written and the timings."""

    out = output_path(cfg.out)  # a local directory, or any etils.epath URL (gs://...)
    timings: dict[str, float] = {}
    corpus = resolve_corpus(cfg.corpus.source, cfg.corpus.languages, cfg.corpus.split)  # fail before loading
    t = time.perf_counter()
    mesh = distributed.default_mesh(cfg.mesh.data, cfg.mesh.model)
    model = jlang.load_model(cfg.model.source, dtype=cfg.model.dtype, mesh=mesh, progress=progress)
    timings["load model"] = time.perf_counter() - t

    t = time.perf_counter()
    stats = collect_stats(
        model,
        corpus,
        batch_size=cfg.stats.batch_size,
        seq_len=cfg.stats.seq_len,
        mode=cfg.corpus.mode,
        max_tokens=cfg.corpus.max_tokens_per_language,
        add_bos=cfg.corpus.add_bos,
        seed=cfg.seed,
        progress=progress,
    )
    timings["statistics"] = time.perf_counter() - t

    t = time.perf_counter()
    masks = identify(stats, cfg.identify)
    timings["identify"] = time.perf_counter() - t
    if distributed.is_primary():  # every process holds the same totals; one writes them
        out.mkdir(parents=True, exist_ok=True)
        resolved = json.loads(json.dumps(config_lib.to_dict(cfg)))
        write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        stats.save(out / "stats.npz")
        masks.save(out / "masks.npz")
        masks.plot_heatmap(out / "masks.png", title=f"{model.name}: {cfg.identify.method} neurons per layer")
        write_text(out / "summary.md", summary_markdown(stats, masks, timings, cfg))
    return {
        "out": str(out),
        "stats": str(out / "stats.npz"),
        "masks": str(out / "masks.npz"),
        "heatmap": str(out / "masks.png"),
        "summary": str(out / "summary.md"),
        "tokens": {lang: int(n) for lang, n in zip(stats.languages, stats.tokens)},
        "timings": timings,
    }
