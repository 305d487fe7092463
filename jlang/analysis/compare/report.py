"""Markdown report, JSON and plots of a `jlang.analysis.compare.core.Comparison` (matplotlib Agg, no pyplot state).

`ComparisonReport` is the comparison as a `jlang.io.report.Report`; `write_outputs` lays it out in a
directory: `compare.json`, one PNG per figure (`types.png`, `overlap.png`, `delta_p.png`, `stages.png`,
`spontaneous.png`) and `report.md`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jlang.analysis.compare.core import Comparison
from jlang.analysis.compare.neurons import TYPE_NAMES
from jlang.analysis.compare.profile import STAGE_NAMES, LayerProfile
from jlang.io.report import FigureWriter, Report, draw_heatmap, new_figure, save_figure, write_json, write_text

__all__ = [
    "ComparisonReport",
    "draw_profile",
    "plot_type_counts",
    "report_markdown",
    "save_plots",
    "spontaneous_verdict",
    "stages_table",
    "write_outputs",
]

_COLORS = {"base": "tab:blue", "aligned": "tab:orange"}


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "–" if x is None or not np.isfinite(x) else fmt.format(x)


# ----------------------------------------------------------------------------- plots


def plot_types(result: Comparison, path: Path) -> Path:
    """Specific / related / general neurons per layer, base vs aligned."""
    fig = new_figure(12, 3.4)
    layers = np.arange(result.num_layers)
    for i, t in enumerate(("specific", "related", "general")):
        ax = fig.add_subplot(1, 3, i + 1)
        idx = TYPE_NAMES.index(t)
        for which, counts, style in (
            ("base", result.type_counts_base, "o-"),
            ("aligned", result.type_counts_aligned, "s--"),
        ):
            ax.plot(layers, counts[idx], style, color=_COLORS[which], label=which)
        ax.set_title(f"{t} neurons per layer", fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel("neurons")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_type_counts(counts: np.ndarray, path: Path, *, title: str = "") -> Path:
    """One checkpoint, per layer (`counts` `[4, L]`): stacked specific + related neurons, and general neurons.

    Two panels, because general neurons usually outnumber the language neurons tenfold.
    """
    fig = new_figure(12, 3.6)
    layers = np.arange(counts.shape[1])
    ax = fig.add_subplot(1, 2, 1)
    bottom = np.zeros(counts.shape[1])
    for t, color in (("specific", "tab:red"), ("related", "tab:purple")):
        row = counts[TYPE_NAMES.index(t)]
        ax.bar(layers, row, bottom=bottom, color=color, label=f"{t} ({int(row.sum())})")
        bottom = bottom + row
    ax.set_title(f"{title or 'neuron types per layer'}: language neurons", fontsize=10)
    ax2 = fig.add_subplot(1, 2, 2)
    row = counts[TYPE_NAMES.index("general")]
    ax2.bar(layers, row, color="tab:green", label=f"general ({int(row.sum())})")
    ax2.set_title("general (language-agnostic) neurons", fontsize=10)
    for a in (ax, ax2):
        a.set_xlabel("layer")
        a.set_ylabel("neurons")
        a.set_xticks(layers)
        a.legend(fontsize=8)
        a.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def plot_overlap(result: Comparison, path: Path) -> Path:
    """Own-set Jaccard per language (bar) and the cross-language Jaccard matrices of both checkpoints."""
    k = len(result.languages)
    fig = new_figure(6 + 2 * (0.5 * k + 2.5), 0.4 * k + 2.5)
    ax = fig.add_subplot(1, 3, 1)
    aligned = set(result.aligned_languages or [])
    colors = ["tab:orange" if l in aligned else "tab:gray" for l in result.languages]
    ax.bar(range(k), np.nan_to_num(result.own_jaccard), color=colors)
    ax.set_xticks(range(k), labels=result.languages)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Jaccard(base set, aligned set)")
    ax.set_title(
        "each language's neurons, base vs aligned" + ("\n(orange: used in alignment)" if aligned else ""),
        fontsize=9,
    )
    for i, (name, m) in enumerate((("base", result.cross_jaccard_base), ("aligned", result.cross_jaccard_aligned))):
        draw_heatmap(
            fig.add_subplot(1, 3, i + 2),
            m,
            result.languages,
            result.languages,
            vmin=0,
            vmax=1,
            title=f"{name}: Jaccard between languages",
            fmt="{:.2f}",
            annotate=k <= 12,
        )
    return save_figure(fig, path)


def plot_delta(result: Comparison, path: Path) -> Path:
    """Mean Δp per language x layer (heat map) and the per-layer distribution of Δp (quantile bands)."""
    d = result.delta
    fig = new_figure(14, 0.35 * len(result.languages) + 2.8)
    draw_heatmap(
        fig.add_subplot(1, 2, 1),
        d["mean"],
        result.languages,
        [str(l) for l in range(result.num_layers)],
        title="mean Δp = p_aligned − p_base (per language, layer)",
        cbar_label="mean Δp",
        diverging=True,
        annotate=False,
        xlabel="layer",
        ylabel="language",
    )
    ax = fig.add_subplot(1, 2, 2)
    q, levels = d["quantiles"], list(np.round(d["quantile_levels"], 2))
    layers = np.arange(result.num_layers)
    for lo, hi, alpha in ((0.01, 0.99, 0.15), (0.05, 0.95, 0.25), (0.25, 0.75, 0.4)):
        ax.fill_between(
            layers,
            q[:, levels.index(lo)],
            q[:, levels.index(hi)],
            color="tab:purple",
            alpha=alpha,
            label=f"{int(lo * 100)}–{int(hi * 100)}%",
        )
    ax.plot(layers, q[:, levels.index(0.5)], color="black", label="median")
    ax.plot(layers, d["mean_abs"].mean(axis=0), color="tab:red", ls="--", label="mean |Δp|")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("Δp")
    ax.set_title("Δp over all languages' neurons, per layer", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def draw_profile(ax, profile: LayerProfile, title: str) -> None:
    """One checkpoint's per-layer curves on `ax`, its stages shaded and numbered."""
    layers = np.arange(profile.num_layers)
    edges = [0, *profile.boundaries, profile.num_layers]
    shades = ["#e8f0fb", "#eaf6e9", "#fdf1e3", "#f6e8f4"]
    for s in range(len(profile.stages())):
        ax.axvspan(edges[s] - 0.5, edges[s + 1] - 0.5, color=shades[s % len(shades)], zorder=0)
        ax.text(
            (edges[s] + edges[s + 1] - 1) / 2,
            1.02,
            f"{s + 1}",
            transform=ax.get_xaxis_transform(),
            ha="center",
            fontsize=8,
        )
    ax.plot(
        layers,
        profile.divergence,
        "o-",
        color="tab:blue",
        label="divergence (1 − mean corr of p across languages)",
    )
    ax.set_xlabel("layer")
    ax.set_ylabel("divergence", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(
        layers,
        100 * profile.language_share,
        "s--",
        color="tab:red",
        label="specific + related neurons (%)",
    )
    ax2.plot(
        layers,
        100 * profile.general_share,
        "^:",
        color="tab:green",
        label="general neurons (%)",
    )
    ax2.set_ylabel("% of the layer's neurons")
    ax.set_title(title, fontsize=10, pad=14)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(
        lines[0] + lines2[0],
        lines[1] + lines2[1],
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=3,
        frameon=False,
    )  # below the axes: the curves fill the plot


def plot_stages(result: Comparison, path: Path) -> Path:
    """Per-layer curves with the segmented stages shaded (1 understanding, 2 shared, 3 output transformation,
    4 vocabulary)."""
    fig = new_figure(13, 4.6)
    for i, (name, prof) in enumerate((("base", result.profile_base), ("aligned", result.profile_aligned))):
        draw_profile(
            fig.add_subplot(1, 2, i + 1),
            prof,
            f"{name}: stages start at layers {[0, *prof.boundaries]}",
        )
    return save_figure(fig, path)


def plot_spontaneous(result: Comparison, path: Path) -> Path:
    """Per language: how far its neuron set moved (1 − Jaccard) against its ΔNLL (or mean |Δp|)."""
    sp = result.spontaneous
    per = sp["per_language"]
    y_key = "delta_nll" if "delta_nll" in sp["measures"] else "mean_abs_dp"
    fig = new_figure(6.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for group, color in (("aligned", "tab:orange"), ("other", "tab:gray")):
        langs = [l for l, r in per.items() if r["group"] == group]
        ax.scatter(
            [per[l]["moved"] for l in langs],
            [per[l].get(y_key, np.nan) for l in langs],
            color=color,
            s=40,
            label="used in alignment" if group == "aligned" else "not used in alignment",
        )
        for l in langs:
            ax.annotate(
                l,
                (per[l]["moved"], per[l].get(y_key, np.nan)),
                fontsize=8,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xlabel("1 − Jaccard(base set, aligned set)")
    ax.set_ylabel("ΔNLL = NLL_aligned − NLL_base (nats)" if y_key == "delta_nll" else "mean |Δp|")
    ax.set_title("spontaneous alignment: did the untrained languages move?", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- markdown


def stages_table(profiles: Mapping[str, LayerProfile]) -> list[str]:
    """A markdown table: per stage, its layers in each checkpoint and the mean curves."""
    names = list(profiles)
    lines = [
        "| stage | " + " | ".join(f"{n}: layers | {n}: divergence | {n}: lang. neurons %" for n in names) + " |",
        "|---|" + "---|---:|---:|" * len(names),
    ]
    stages = {n: p.stages() for n, p in profiles.items()}
    count = max(len(s) for s in stages.values())
    for i in range(count):
        label = stages[names[0]][i]["name"] if stages[names[0]] else f"stage {i + 1}"
        cells = []
        for n in names:
            if i < len(stages[n]):
                st = stages[n][i]
                span = (
                    f"{st['first_layer']}"
                    if st["first_layer"] == st["last_layer"]
                    else f"{st['first_layer']}–{st['last_layer']}"
                )
                cells += [
                    span,
                    f"{st['divergence']:.3f}",
                    f"{100 * st['language_share']:.2f}",
                ]
            else:
                cells += ["–"] * 3
        lines.append(f"| {i + 1}. {label} | " + " | ".join(cells) + " |")
    return lines


def spontaneous_verdict(sp: Mapping[str, Any]) -> str:
    """One paragraph with the numbers: did the languages outside the alignment set move too?"""
    g, r = sp["groups"], sp["ratio"]
    a, o = g["aligned"], g["other"]
    ratio = r.get("moved", float("nan"))
    if not np.isfinite(ratio):
        word = "Cannot tell"
    elif ratio >= 0.75:
        word = "Yes"
    elif ratio >= 0.4:
        word = "Partly"
    else:
        word = "Little"
    text = (
        f"{word}: the neuron sets of the {len(sp['other_languages'])} languages not used in alignment moved "
        f"{_f(ratio, '{:.2f}')}x as much as those of the {len(sp['aligned_languages'])} aligned languages "
        f"(mean 1 − Jaccard {_f(o['moved'])} vs {_f(a['moved'])}); their activation probabilities shifted "
        f"{_f(r.get('mean_abs_dp'), '{:.2f}')}x as much (mean |Δp| {_f(o['mean_abs_dp'], '{:.4f}')} vs "
        f"{_f(a['mean_abs_dp'], '{:.4f}')})."
    )
    if "delta_nll" in sp["measures"]:
        text += (
            f" Perplexity: ΔNLL {_f(o['delta_nll'], '{:+.3f}')} nats on the other languages vs "
            f"{_f(a['delta_nll'], '{:+.3f}')} on the aligned ones (PPL x{np.exp(o['delta_nll']):.3f} vs "
            f"x{np.exp(a['delta_nll']):.3f})."
        )
    return text


def intro_section(result: Comparison) -> list[str]:
    """What was compared, on which tokens, with which ternary settings."""
    m, langs = result.meta, result.languages
    return [
        f"Base `{m.get('base')}` vs aligned `{m.get('aligned')}`, {result.num_layers} layers x {result.num_neurons} "
        f"neurons, statistics on the same {int(result.tokens.sum()):,} tokens ({m.get('split', '?')} split of corpus "
        f"`{m.get('corpus', '?')}`, {m.get('mode', '?')} mode; "
        + ", ".join(f"{l} {int(n):,}" for l, n in zip(langs, result.tokens))
        + "). Ternary neurons (`jlang.ternary`, top_rate "
        f"{m.get('top_rate')}, λ {m.get('lam')}: base λ = {_f(result.lambda_base, '{:.4f}')}, aligned λ = "
        f"{_f(result.lambda_aligned, '{:.4f}')}). General = `p_k > τ` for every language (τ base "
        f"{_f(result.tau_base, '{:.4f}')}, aligned {_f(result.tau_aligned, '{:.4f}')}).",
    ]


def headline_section(result: Comparison) -> list[str]:
    """The headline numbers as a bullet list."""
    h, langs = result.headline(), result.languages
    weakest = langs[int(np.nanargmin(np.nan_to_num(result.own_jaccard, nan=2)))]
    lines = [
        "## Headline",
        "",
        "- neurons by type, base → aligned: "
        + ", ".join(f"{t} {h['types_base'][t]} → {h['types_aligned'][t]}" for t in ("specific", "related", "general"))
        + ".",
        f"- each language's neuron set, base vs aligned: mean Jaccard **{_f(h['mean_own_jaccard'])}** "
        f"(min {_f(np.nanmin(result.own_jaccard))} {weakest}).",
        f"- overlap between languages (mean off-diagonal Jaccard): base {_f(h['mean_cross_jaccard_base'])}, "
        f"aligned {_f(h['mean_cross_jaccard_aligned'])}.",
        f"- mean |Δp| over all neurons and languages: **{_f(h['mean_abs_dp'], '{:.5f}')}**.",
        f"- four stages start at layers {[0, *h['stage_boundaries_base']]} (base) and "
        f"{[0, *h['stage_boundaries_aligned']]} (aligned).",
    ]
    if result.nll_base and result.nll_aligned:
        common = [l for l in langs if l in result.nll_base and l in result.nll_aligned]
        dn = np.mean([result.nll_aligned[l] - result.nll_base[l] for l in common])
        lines.append(f"- perplexity: mean ΔNLL over languages {dn:+.3f} nats (PPL x{np.exp(dn):.3f}).")
    if result.spontaneous is not None:
        lines += ["- spontaneous alignment: " + spontaneous_verdict(result.spontaneous)]
    return lines


def types_section(result: Comparison) -> list[str]:
    """Neuron types per layer in both checkpoints, and the type changes."""
    lines = [
        "## Neuron types per layer",
        "",
        "specific = assigned to one language, related = 2..K−1, general = above τ for all K (the ternary "
        "paper's language-agnostic neurons; AutoSweep keeps them out of the masks).",
        "",
        "| layer | specific base | specific aligned | related base | related aligned | general base "
        "| general aligned |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cb, ca = result.type_counts_base, result.type_counts_aligned
    for l in range(result.num_layers):
        lines.append(f"| {l} | " + " | ".join(f"{cb[t, l]} | {ca[t, l]}" for t in (1, 2, 3)) + " |")
    lines.append("| all | " + " | ".join(f"{cb[t].sum()} | {ca[t].sum()}" for t in (1, 2, 3)) + " |")
    lines += [
        "",
        "Type changes (rows: base type, columns: aligned type; neurons):",
        "",
        "| base \\ aligned | " + " | ".join(TYPE_NAMES) + " |",
        "|---|" + "---:|" * len(TYPE_NAMES),
    ]
    for i, t in enumerate(TYPE_NAMES):
        lines.append(f"| {t} | " + " | ".join(str(int(x)) for x in result.transitions[i]) + " |")
    return lines


def languages_section(result: Comparison) -> list[str]:
    """Per language: its neuron sets in both checkpoints, their overlap and its shift."""
    aligned = set(result.aligned_languages or [])
    lines = [
        "## Each language's neurons before and after",
        "",
        "| language | aligned on | tokens | neurons base | neurons aligned | shared | Jaccard "
        "| mean Δp on its base neurons | mean abs Δp |",
        "|---|:-:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    mean_abs = result.delta["mean_abs"].mean(axis=1)
    for k, l in enumerate(result.languages):
        lines.append(
            f"| {l} | {'yes' if l in aligned else ''} | {int(result.tokens[k]):,} | {result.set_sizes_base[k]} | "
            f"{result.set_sizes_aligned[k]} | {result.set_intersection[k]} | {_f(result.own_jaccard[k])} | "
            f"{_f(result.own_shift[k], '{:+.4f}')} | {_f(mean_abs[k], '{:.5f}')} |"
        )
    return lines


def shifts_section(result: Comparison) -> list[str]:
    """The distribution of Δp per layer."""
    q = result.delta["quantiles"]
    levels = list(np.round(result.delta["quantile_levels"], 2))
    lines = [
        "## Shifts in activation probability",
        "",
        "Δp = p_aligned − p_base per neuron and language, on the same tokens (no sampling noise between the "
        "two: every difference comes from the weights).",
        "",
        "| layer | mean abs Δp | 5% | 25% | median | 75% | 95% |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for l in range(result.num_layers):
        lines.append(
            f"| {l} | {result.delta['mean_abs'][:, l].mean():.5f} | "
            + " | ".join(f"{q[l, levels.index(x)]:+.4f}" for x in (0.05, 0.25, 0.5, 0.75, 0.95))
            + " |"
        )
    return lines


def stages_section(result: Comparison) -> list[str]:
    """How the stages are found, and both checkpoints' stages."""
    pb = result.profile_base
    lines = [
        "## Four stages",
        "",
        f"Per layer: divergence = 1 − mean over language pairs of the correlation (over the layer's neurons) of their "
        f"activation probabilities, and the share of language (specific + related) neurons. Curve segmented: "
        f"`{pb.curve}`{' (both z-scored)' if pb.curve == 'both' else ' (z-scored)'}; the layers are cut into "
        f"{pb.num_stages} contiguous stages by the exact least-squares piecewise-constant segmentation (dynamic "
        f"programming over every boundary placement). Stages in depth order: "
        + ", ".join(f"{i + 1}. {n}" for i, n in enumerate(STAGE_NAMES))
        + ".",
        "",
    ]
    if pb.note:
        lines += [pb.note, ""]
    return lines + stages_table({"base": result.profile_base, "aligned": result.profile_aligned})


def spontaneous_section(sp: Mapping[str, Any]) -> list[str]:
    """Did the languages outside the alignment set move: the verdict, per language and per group."""
    lines = [
        "## Spontaneous alignment",
        "",
        f"Aligned on: {', '.join(sp['aligned_languages'])}. Not used in alignment: {', '.join(sp['other_languages'])}.",
        "",
        spontaneous_verdict(sp),
        "",
        "That the other languages moved does not say why: training text of the evaluation's domain helps "
        "every language alike; a control run (e.g. the same steps on English-only pairs) separates that "
        "from cross-lingual transfer.",
        "",
        "| language | group | 1 − Jaccard | mean abs Δp | NLL base | NLL aligned | ΔNLL |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for l, r in sp["per_language"].items():
        lines.append(
            f"| {l} | {r['group']} | {_f(r['moved'])} | {_f(r['mean_abs_dp'], '{:.5f}')} | "
            f"{_f(r.get('nll_base'))} | {_f(r.get('nll_aligned'))} | {_f(r.get('delta_nll'), '{:+.3f}')} |"
        )
    lines += [
        "",
        "| group | " + " | ".join(sp["measures"]) + " |",
        "|---|" + "---:|" * len(sp["measures"]),
    ]
    for g in ("aligned", "other"):
        lines.append(f"| {g} | " + " | ".join(_f(sp["groups"][g][x], "{:.4f}") for x in sp["measures"]) + " |")
    lines.append("| other / aligned | " + " | ".join(_f(sp["ratio"][x], "{:.2f}") for x in sp["measures"]) + " |")
    return lines


def report_markdown(
    result: Comparison,
    *,
    title: str | None = None,
    preamble: str = "",
    figures: bool = True,
) -> str:
    """The whole report: title, preamble, then one section per part of the comparison (with its figure)."""
    sections = [
        (headline_section(result), None),
        (types_section(result), "![types per layer](types.png)"),
        (languages_section(result), "![overlaps](overlap.png)"),
        (shifts_section(result), "![Δp](delta_p.png)"),
        (stages_section(result), "![stages](stages.png)"),
    ]
    if result.spontaneous is not None:
        sections.append((spontaneous_section(result.spontaneous), "![spontaneous alignment](spontaneous.png)"))
    secs = result.meta.get("seconds")
    if secs:
        sections.append((["## Wall time", "", ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + "."], None))
    lines = [f"# {title or 'Base vs aligned: language neurons'}", ""]
    lines += [preamble.rstrip(), ""] if preamble else []
    lines += intro_section(result)
    for section, figure in sections:
        lines += ["", *section]
        if figures and figure:
            lines += ["", figure]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the report


class ComparisonReport(Report):
    """A `Comparison` as a report: its JSON, its figures and its markdown (`title`, `preamble` after the title)."""

    def __init__(self, result: Comparison, *, title: str | None = None, preamble: str = ""):
        self.result, self.title, self.preamble = result, title, preamble

    def to_dict(self) -> dict[str, Any]:
        return self.result.to_dict()

    def figures(self) -> dict[str, FigureWriter]:
        figures = {
            "types": functools.partial(plot_types, self.result),
            "overlap": functools.partial(plot_overlap, self.result),
            "delta_p": functools.partial(plot_delta, self.result),
            "stages": functools.partial(plot_stages, self.result),
        }
        if self.result.spontaneous is not None:
            figures["spontaneous"] = functools.partial(plot_spontaneous, self.result)
        return figures

    def markdown(self) -> str:
        return report_markdown(self.result, title=self.title, preamble=self.preamble)


def save_plots(result: Comparison, out: str | Path) -> dict[str, Path]:
    """`{out}/{figure}.png` for every figure of the comparison; returns figure name -> path."""
    return {name: draw(Path(out) / f"{name}.png") for name, draw in ComparisonReport(result).figures().items()}


def write_outputs(
    result: Comparison, out: str | Path, *, title: str | None = None, preamble: str = ""
) -> dict[str, Path]:
    """Write `compare.json`, the PNGs (`{figure}.png`) and `report.md` under `out` (the report names its figures
    by file name, so the directory, not a prefix, holds them)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = ComparisonReport(result, title=title, preamble=preamble)
    paths = {"json": write_json(out / "compare.json", report.to_dict())}
    paths.update(save_plots(result, out))
    paths["report"] = write_text(out / "report.md", report.markdown())
    return paths
