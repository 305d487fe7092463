"""Overlap of language neurons, script/family, neuron specialisation and code-mixed inputs, on the default model.

    python experiments/overlap.py configs/overlap_default.yaml [--set codemix.enabled=false ...]

Steps (everything under `config.out`):

1. LAPE neurons and statistics: reused from `reuse` (`runs/lape_default`, written by
   `jlang run configs/lape_default.yaml`) when they fit, else computed with the `lape`
   section (capped) into `{out}/lape`.
2. `overlap.json|png`, `overlap_layers.png`: IoU of the language neuron sets overall and
   per layer, average-linkage clustering, relation to shared script / family / branch
   (Mantel permutation tests; `jlang.analysis.overlap`, table `jlang.data.langinfo`).
3. `specialization.json|png`: the neuron-specialisation counting of the Aya-23 study
   (Tan et al. 2024: 90 % cumulative activation frequency per layer, shared neurons
   removed, IoU per layer), counting `a > 0` at `mlp.act`.
4. `codemix.json|png`: code-mixed sentences from the parallel held-out split (bases x
   partners x ratios 0.25/0.5/0.75, `jlang.data.corpora.codemix`); a statistics pass over them;
   how the activation of each language's LAPE neurons and the specialised-neuron IoU
   with the base and the partner change with the mixing ratio.
5. `report.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

import numpy as np
import yaml

import jlang
from jlang import config as config_lib
from jlang.analysis.overlap import group_relation, mask_activation, overlap, specialization
from jlang.data.corpora.codemix import build_codemix, read_parallel, set_name
from jlang.data.langinfo import family_of, script_of
from jlang.io.report import new_figure, save_figure, save_heatmaps, write_json
from jlang.masks import NeuronMasks
from jlang.methods.chain import run_lape
from jlang.stats import ActivationStats
from jlang.stats.collect import collect_stats


@dataclasses.dataclass(frozen=True)
class OverlapSection:
    permutations: int = 9999
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SpecializationSection:
    enabled: bool = True
    threshold: float = 0.9  # Tan et al. 2024 get_specialized_neurons


@dataclasses.dataclass(frozen=True)
class CodemixSection:
    enabled: bool = True
    bases: tuple[str, ...] = ("fr", "zh")  # Aya-23 study: fr, zh
    partners: tuple[str, ...] = (
        "en",
        "es",
        "ja",
        "ko",
    )  # Aya-23: en es it ja ko (no it in the default corpus)
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    max_rows: int | None = 200
    seed: int = 0
    batch_size: int = 8
    seq_len: int = 128
    mode: Literal["pack", "pad"] = "pack"


@dataclasses.dataclass(frozen=True)
class OverlapConfig:
    """`experiments/overlap.py`: overlap, script/family, specialisation, code-mixing."""

    out: str = "runs/overlap"
    reuse: str | None = "runs/lape_default"  # a directory with masks.npz + stats.npz
    # Load {out}/codemix.json when it exists instead of redoing the code-mixing pass (to rebuild report.md).
    reuse_results: bool = False
    lape: config_lib.RunConfig = config_lib.RunConfig()
    overlap: OverlapSection = OverlapSection()
    specialization: SpecializationSection = SpecializationSection()
    codemix: CodemixSection = CodemixSection()


def lape_neurons(cfg: OverlapConfig, log):
    """(masks, stats, how): `reuse` when it fits the `lape` section's model/languages/method, else run LAPE."""
    if cfg.reuse:
        root = Path(cfg.reuse)
        if (root / "masks.npz").is_file() and (root / "stats.npz").is_file():
            masks, stats = (
                NeuronMasks.load(root / "masks.npz"),
                ActivationStats.load(root / "stats.npz"),
            )
            source = cfg.lape.model.source
            if (
                masks.meta.get("model") in (source, Path(source).name, Path(source).stem)
                and list(masks.languages) == list(cfg.lape.corpus.languages)
                and masks.meta.get("method") == cfg.lape.identify.method
            ):
                log(f"reusing {root} ({masks.unique_count()} neurons)")
                return (
                    masks,
                    stats,
                    f"reused `{root}` ({int(stats.tokens.sum()):,} tokens)",
                )
            log(f"{root} was made for another model/languages/method; running LAPE")
    lape_cfg = dataclasses.replace(cfg.lape, out=str(Path(cfg.out) / "lape"))
    result = run_lape(lape_cfg)
    return (
        NeuronMasks.load(result["masks"]),
        ActivationStats.load(result["stats"]),
        f"computed with the config's `lape` section into `{lape_cfg.out}` ({result['timings']})",
    )


def script_class_means(result) -> dict[str, float]:
    """Mean IoU of Latin–Latin, non-Latin–non-Latin and Latin–non-Latin pairs."""
    latin = [script_of(c) == "Latin" for c in result.languages]
    groups: dict[str, list[float]] = {
        "Latin–Latin": [],
        "non-Latin–non-Latin": [],
        "Latin–non-Latin": [],
    }
    k = len(latin)
    for i in range(k):
        for j in range(i + 1, k):
            v = result.overall[i, j]
            if not np.isfinite(v):
                continue
            key = (
                "Latin–Latin"
                if latin[i] and latin[j]
                else "non-Latin–non-Latin"
                if not (latin[i] or latin[j])
                else "Latin–non-Latin"
            )
            groups[key].append(float(v))
    return {k: (float(np.mean(v)) if v else float("nan")) for k, v in groups.items()} | {
        f"{k} pairs": len(v) for k, v in groups.items()
    }


def relation_table(relations: dict) -> list[str]:
    lines = [
        "| shared … | same-group pairs | mean IoU same | mean IoU different | r | Mantel p (one-sided) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, rel in relations.items():
        lines.append(
            f"| {key} | {rel['same_pairs']} | {rel['mean_same']:.3f} | {rel['mean_diff']:.3f} | {rel['r']:.3f} | "
            f"{rel['p_value']:.4f} |"
        )
    return lines


def spec_overall(spec) -> np.ndarray:
    """`[K, K]` mean over layers of the specialised-neuron IoU."""
    with np.errstate(invalid="ignore"):
        return np.nanmean(spec.per_layer, axis=0)


def codemix_analysis(cfg: OverlapConfig, model, masks, log) -> dict:
    """Build the code-mixed sets, collect statistics on them, measure neuron activation and specialisation."""
    c = cfg.codemix
    cm = build_codemix(read_parallel(), c.bases, c.partners, c.ratios, seed=c.seed, max_rows=c.max_rows)
    cm.save(Path(cfg.out) / "codemix_text")
    t = time.perf_counter()
    stats = collect_stats(
        model,
        {name: texts for name, texts in cm.sets.items()},
        batch_size=c.batch_size,
        seq_len=c.seq_len,
        mode=c.mode,
        seed=c.seed,
    )
    stats.save(Path(cfg.out) / "codemix_stats.npz")
    seconds = time.perf_counter() - t
    langs = [l for l in masks.languages if l in list(c.bases) + list(c.partners)]
    sub = masks.select(langs)
    act = mask_activation(stats, sub)  # [S, K]
    act_layer = mask_activation(stats, sub, per_layer=True)  # [S, K, L]
    spec = specialization(stats, threshold=cfg.specialization.threshold)
    spec_mean = spec_overall(spec)
    curves = {}
    ratios = [0.0] + [float(r) for r in c.ratios] + [1.0]
    L = stats.num_layers
    top = list(range(L - 4, L))
    for b in c.bases:
        for p in c.partners:
            if p == b:
                continue
            names = [b] + [set_name(b, p, float(r)) for r in c.ratios] + [p]
            idx = [stats.languages.index(n) for n in names]
            ib, ip = langs.index(b), langs.index(p)
            sb, sp = spec.languages.index(b), spec.languages.index(p)
            curves[f"{b}-{p}"] = {
                "ratios": ratios,
                "base_neurons": act[idx, ib].tolist(),
                "partner_neurons": act[idx, ip].tolist(),
                "base_neurons_top4": act_layer[idx, ib][:, top].mean(axis=1).tolist(),
                "partner_neurons_top4": act_layer[idx, ip][:, top].mean(axis=1).tolist(),
                "spec_iou_base": [float(spec_mean[i, sb]) for i in idx],
                "spec_iou_partner": [float(spec_mean[i, sp]) for i in idx],
                "spec_iou_base_by_layer": [spec.per_layer[:, i, sb].tolist() for i in idx],
                "spec_iou_partner_by_layer": [spec.per_layer[:, i, sp].tolist() for i in idx],
                "replaced_share": [0.0] + [cm.info[n]["replaced_share"] for n in names[1:-1]] + [1.0],
            }
    examples = {name: cm.sets[name][:2] for name in cm.names() if name.endswith("@0.5")}
    return {
        "curves": curves,
        "rows": cm.rows,
        "tokens": dict(zip(stats.languages, stats.tokens.tolist())),
        "seconds": seconds,
        "examples": examples,
        "languages": langs,
        "meta": cm.meta,
    }


def plot_codemix(res: dict, path: Path) -> Path:
    fig = new_figure(15, 4.2)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    colors = {}
    for n, (pair, cur) in enumerate(res["curves"].items()):
        color = colors.setdefault(pair, f"C{n % 10}")
        r = cur["ratios"]
        # 0 = the unmixed base sentences' value, 1 = the unmixed partner translations' value
        axes[0].plot(r, _normalise(cur["base_neurons"]), "-o", color=color, ms=3, label=pair)
        axes[0].plot(r, _normalise(cur["partner_neurons"]), "--s", color=color, ms=3)
        axes[1].plot(r, cur["spec_iou_base"], "-o", color=color, ms=3, label=pair)
        axes[1].plot(r, cur["spec_iou_partner"], "--s", color=color, ms=3)
    axes[0].set_title(
        "LAPE neurons: activation, scaled base text = 0, partner = 1\n(solid: base's neurons, dashed: partner's)",
        fontsize=9,
    )
    axes[1].set_title(
        "specialised neurons: IoU with the unmixed base (solid)\nand with the unmixed partner (dashed)", fontsize=9
    )
    for ax in axes[:2]:
        ax.set_xlabel("mixing ratio (0 = base text, 1 = partner text)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("scaled P(a > 0)")
    axes[1].set_ylabel("mean IoU over layers")
    # per layer at ratio 0.5: IoU with base minus IoU with partner
    for pair, cur in res["curves"].items():
        mid = cur["ratios"].index(0.5) if 0.5 in cur["ratios"] else len(cur["ratios"]) // 2
        diff = np.array(cur["spec_iou_base_by_layer"][mid]) - np.array(cur["spec_iou_partner_by_layer"][mid])
        axes[2].plot(range(len(diff)), diff, "-", color=colors[pair], label=pair)
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].set_xlabel("layer")
    axes[2].set_ylabel("IoU(mixed, base) − IoU(mixed, partner)")
    axes[2].set_title(
        "r = 0.5: IoU(mixed, base) − IoU(mixed, partner) per layer\n(> 0: the mixed text's specialised neurons are "
        "closer to the base's)",
        fontsize=9,
    )
    axes[2].legend(fontsize=7)
    return save_figure(fig, path)


def _normalise(values) -> list[float]:
    v = np.asarray(values, np.float64)
    lo, hi = v[0], v[-1]
    return ((v - lo) / (hi - lo)).tolist() if hi != lo else [np.nan] * len(v)


def report(cfg, masks, stats, how, ov, classes, spec, spec_rel, cmx, timings) -> str:
    L = masks.num_layers
    lines = [
        f"# Overlap of language neurons on `{masks.meta.get('model')}`",
        "",
        (
            f"LAPE neurons of {len(masks.languages)} languages ({masks.unique_count()} unique, {L} layers × "
            f"{masks.num_neurons} neurons); {how}."
        ),
        "",
        "## IoU of the language neuron sets",
        "",
        f"IoU (Jaccard) = |A ∩ B| / |A ∪ B| over all (layer, neuron) pairs; rows and columns in the order of "
        f"average-linkage clustering of 1 − IoU. Mean over language pairs: **{ov.mean_overall():.3f}**; most "
        "similar: " + ", ".join(f"{a}–{b} {v:.3f}" for a, b, v in ov.top_pairs(5)) + ".",
        "",
        ov.table(),
        "",
        "![clustered IoU](overlap.png)",
        "",
        "Per layer (mean over pairs, NaN where no language has a neuron in the layer): "
        + ", ".join(f"L{l} {v:.2f}" for l, v in enumerate(ov.mean_by_layer()) if np.isfinite(v))
        + ".",
        "",
        "![IoU per layer](overlap_layers.png)",
        "",
        "## Script and family",
        "",
        (
            "Does sharing a script (or family, or branch) go with sharing neurons? r = correlation over language pairs "
            "between IoU and the same-group indicator; p from a Mantel test (labels permuted among languages, "
            f"{cfg.overlap.permutations} permutations, one-sided). Table: `jlang.data.langinfo`."
        ),
        "",
        *relation_table(ov.relations),
        "",
        (
            f"By script class: Latin–Latin pairs {classes['Latin–Latin']:.3f} ({classes['Latin–Latin pairs']} pairs), "
            f"non-Latin–non-Latin {classes['non-Latin–non-Latin']:.3f} ({classes['non-Latin–non-Latin pairs']}), "
            f"Latin–non-Latin {classes['Latin–non-Latin']:.3f} ({classes['Latin–non-Latin pairs']})."
        ),
        "",
    ]
    if spec is not None:
        mean = spec.mean_by_layer()
        sizes = spec.masks.sum(axis=2)
        lines += [
            "## Neuron specialisation (Tan et al. 2024, as in the Aya-23 study)",
            "",
            (
                f"Per language and layer: neurons sorted by how often they fire, the longest prefix holding ≤ "
                f"{spec.threshold:g} of the layer's total firing kept; neurons kept by every language removed "
                f"(on average {spec.shared_removed.mean():.0f} per layer); IoU per layer between languages. Firing = "
                "`a > 0` at `mlp.act`. The original counts non-zero entries of the down-projection input, which for a "
                "gated MLP is `act(gate) ⊙ up` and is almost never exactly zero: every neuron would count every token "
                "and the 90 % prefix would be an arbitrary 90 % of the neurons. `a > 0` is the event ReLU's non-zero "
                "stands for (`SiLU/GELU(z) > 0 ⇔ z > 0`)."
            ),
            "",
            f"Specialised neurons per language and layer: mean {sizes.mean():.0f} of {masks.num_neurons} "
            f"(min {sizes.min()}, max {sizes.max()}). Mean IoU between languages per layer: "
            + ", ".join(f"L{l} {v:.2f}" for l, v in enumerate(mean))
            + ".",
            "",
            (
                f"Relation to script (mean over layers of the IoU): r = {spec_rel['script']['r']:.3f}, Mantel p = "
                f"{spec_rel['script']['p_value']:.4f}; family: r = {spec_rel['family']['r']:.3f}, p = "
                f"{spec_rel['family']['p_value']:.4f}. Agreement with the LAPE overlap across language pairs: Pearson "
                f"r = {spec_rel['lape_agreement']:.3f}."
            ),
            "",
            "![specialisation IoU](specialization.png)",
            "",
        ]
    if cmx is not None:
        lines += [
            "## Code-mixed inputs",
            "",
            (
                f"{cmx['rows']} parallel held-out rows holding all of "
                f"{', '.join(cmx['meta']['bases'] + cmx['meta']['partners'])}; for each base b and partner p, a share "
                "r of b's words is replaced by the partner word linked to it in the aligned sentence (Dice association "
                "over the parallel split + competitive linking; `jlang.data.corpora.codemix`). A statistics pass over "
                f"every set (base, partner and mixed text, {sum(cmx['tokens'].values()):,} tokens, "
                f"{cmx['seconds']:.0f} s). Examples at r = 0.5:"
            ),
            "",
            *[f"- `{n}`: {ex[0]}" for n, ex in list(cmx["examples"].items())[:4]],
            "",
            (
                "Activation of the LAPE neurons: `P(a > 0)` averaged over the base language's neurons and over the "
                "partner's neurons, each scaled so that 0 = its value on the unmixed base sentences and 1 = its value "
                "on the unmixed partner translations of the same rows (0.5 at r = 0.5 = the neurons respond in "
                "proportion to the mixed-in words). Specialised-neuron IoU (mean over layers) of the mixed set with "
                "the unmixed base and with the unmixed partner:"
            ),
            "",
            (
                "| pair | words replaced (r = .25/.5/.75) | base neurons .25/.5/.75 | partner neurons .25/.5/.75 | "
                "spec. IoU with base at .5 | with partner at .5 |"
            ),
            "|---|---|---|---|---:|---:|",
        ]
        for pair, cur in cmx["curves"].items():
            nb, npn = (
                _normalise(cur["base_neurons"]),
                _normalise(cur["partner_neurons"]),
            )
            mid = cur["ratios"].index(0.5) if 0.5 in cur["ratios"] else 2
            lines.append(
                f"| {pair} | {' / '.join(f'{x:.2f}' for x in cur['replaced_share'][1:-1])} | "
                f"{' / '.join(f'{x:.2f}' for x in nb[1:-1])} | {' / '.join(f'{x:.2f}' for x in npn[1:-1])} | "
                f"{cur['spec_iou_base'][mid]:.3f} | {cur['spec_iou_partner'][mid]:.3f} |"
            )
        lines += ["", codemix_verdict(cmx), "", "![code-mixing](codemix.png)", ""]
    lines += [
        "## Wall time",
        "",
        ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".",
        "",
    ]
    return "\n".join(lines)


def codemix_verdict(cmx: dict) -> str:
    mids, base_side, mono_b, mono_p = [], 0, 0, 0
    for cur in cmx["curves"].values():
        mid = cur["ratios"].index(0.5) if 0.5 in cur["ratios"] else 2
        mids.append((cur["spec_iou_base"][mid], cur["spec_iou_partner"][mid]))
        base_side += cur["spec_iou_base"][mid] > cur["spec_iou_partner"][mid]
        b = np.asarray(cur["base_neurons"])
        p = np.asarray(cur["partner_neurons"])
        mono_b += bool(np.all(np.diff(b) <= 1e-12))
        mono_p += bool(np.all(np.diff(p) >= -1e-12))
    n = len(mids)
    mb = float(np.mean([m[0] for m in mids]))
    mp = float(np.mean([m[1] for m in mids]))
    half = [cur["ratios"].index(0.5) for cur in cmx["curves"].values() if 0.5 in cur["ratios"]]
    moved_b = [_normalise(cur["base_neurons"])[i] for cur, i in zip(cmx["curves"].values(), half)]
    moved_p = [_normalise(cur["partner_neurons"])[i] for cur, i in zip(cmx["curves"].values(), half)]
    words = [cur["replaced_share"][i] for cur, i in zip(cmx["curves"].values(), half)]
    if base_side > n / 2:
        conclusion = (
            "so here, as in the Aya-23 study, the base language drives neuron sharing more than the mixed-in one"
        )
    else:
        conclusion = (
            "so here, unlike the Aya-23 study's finding, the mixed-in language weighs at least as much as the base"
        )
    return (
        f"As the mixing ratio grows, the base language's LAPE neurons fire less for {mono_b}/{n} pairs (monotone over "
        f"0, .25, .5, .75, 1) and the partner's fire more for {mono_p}/{n}. With half of the words replaced "
        f"(r = 0.5, {np.mean(words):.2f} actually replaced on average), the partner's neurons have moved a mean "
        f"{np.mean(moved_p):.2f} of the way to their response on the partner's own text, the base's only "
        f"{np.mean(moved_b):.2f}: a few inserted words switch the partner's neurons on more than they switch the "
        f"base's off. At r = 0.5 the mixed text's specialised "
        f"neurons overlap more with the unmixed base's than with the unmixed partner's for {base_side}/{n} pairs "
        f"(mean IoU {mb:.3f} vs {mp:.3f}), {conclusion}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg: OverlapConfig = config_lib.load_config(args.config, OverlapConfig, args.set)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config_lib.to_dict(cfg))), sort_keys=False))
    log = lambda msg: print(f"[overlap] {msg}", flush=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    masks, stats, how = lape_neurons(cfg, log)
    timings["LAPE neurons"] = time.perf_counter() - t

    t = time.perf_counter()
    ov = overlap(masks, permutations=cfg.overlap.permutations, seed=cfg.overlap.seed)
    ov.save(out / "overlap")
    classes = script_class_means(ov)
    log("\n" + ov.table())

    spec = spec_rel = None
    if cfg.specialization.enabled:
        spec = specialization(stats, list(masks.languages), threshold=cfg.specialization.threshold)
        overall = spec_overall(spec)
        langs = spec.languages
        spec_rel = {
            key: group_relation(overall, labels, permutations=cfg.overlap.permutations, seed=cfg.overlap.seed)
            for key, labels in (("script", [script_of(c) for c in langs]), ("family", [family_of(c) for c in langs]))
        }
        iu = np.triu_indices(len(langs), 1)
        spec_rel["lape_agreement"] = float(np.corrcoef(overall[iu], np.nan_to_num(ov.overall[iu]))[0, 1])
        write_json(out / "specialization.json", {**spec.to_dict(), "relations": spec_rel})
        order = ov.order
        m = overall[np.ix_(order, order)].copy()
        np.fill_diagonal(m, np.nan)
        names = [langs[i] for i in order]
        per_layer = spec.mean_by_layer()
        save_heatmaps(
            out / "specialization.png",
            [
                {
                    "matrix": m,
                    "rows": names,
                    "cols": names,
                    "title": "specialised neurons: IoU (mean over layers), LAPE cluster order",
                    "cbar_label": "IoU",
                    "fmt": "{:.2f}",
                },
                {
                    "matrix": spec.per_layer.reshape(spec.per_layer.shape[0], -1)[
                        :, [i * len(langs) + j for i, j in zip(*iu)]
                    ].T,
                    "rows": [f"{langs[i]}-{langs[j]}" for i, j in zip(*iu)],
                    "cols": [str(l) for l in range(len(per_layer))],
                    "title": "IoU per layer (rows: language pairs)",
                    "cbar_label": "IoU",
                    "annotate": False,
                    "xlabel": "layer",
                },
            ],
            ncols=2,
            panel_size=(0.55 * len(langs) + 4, max(0.5 * len(langs) + 2, 0.1 * len(iu[0]) + 2)),
        )
    timings["overlap + specialisation"] = time.perf_counter() - t

    cmx = None
    if cfg.codemix.enabled and cfg.reuse_results and (out / "codemix.json").is_file():
        cmx = json.loads((out / "codemix.json").read_text(encoding="utf-8"))
        plot_codemix(cmx, out / "codemix.png")
        log(f"reusing {out / 'codemix.json'} (its statistics pass took {cmx['seconds']:.0f} s)")
        timings["code-mixing statistics pass (reused result, its own run)"] = cmx["seconds"]
    elif cfg.codemix.enabled:
        t = time.perf_counter()
        model = jlang.load_model(cfg.lape.model.source, dtype=cfg.lape.model.dtype)
        timings["load model"] = time.perf_counter() - t
        t = time.perf_counter()
        cmx = codemix_analysis(cfg, model, masks, log)
        write_json(out / "codemix.json", cmx)
        plot_codemix(cmx, out / "codemix.png")
        timings["code-mixing"] = time.perf_counter() - t
        log(codemix_verdict(cmx))

    (out / "report.md").write_text(
        report(cfg, masks, stats, how, ov, classes, spec, spec_rel, cmx, timings),
        encoding="utf-8",
    )
    log(f"wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
