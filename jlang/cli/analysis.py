"""Sub-commands for the analyses (`jlang.analysis`): overlap, culture, culture-corpus, codemix.

* `jlang overlap MASKS.npz [--stats STATS.npz]`: IoU per layer and overall, clustered
  heat map, script/family relation; with statistics also the neuron-specialisation
  counting (Tan et al. 2024 / Aya-23). NumPy only, no model.
* `jlang culture --language L --culture C --map CULTURE=LANG ...`: compound, pure and
  generic culture masks from two LAPE mask files (or two statistics files, on which
  LAPE is run); `--model` adds the ΔPPL matrices of every mask kind.
* `jlang culture-corpus`: build the demonstration culture corpus (Faker locales).
* `jlang codemix`: code-mixed sets from the parallel corpus at mixing ratios.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from jlang import models
from jlang.analysis.culture import culture_masks, culture_ppl, identify_culture_neurons
from jlang.analysis.overlap import overlap, specialization
from jlang.data.corpora.codemix import build_codemix, read_parallel
from jlang.data.corpora.culture import culture_corpus, ensure_culture_corpus
from jlang.data.sources import Corpus, resolve_corpus
from jlang.masks import MaskError, NeuronMasks
from jlang.stats.container import ActivationStats, StatsError

__all__ = ["COMMANDS"]


def _load_masks_or_stats(path: str):
    """A NeuronMasks or ActivationStats file, whichever `path` holds."""
    try:
        return NeuronMasks.load(path)
    except (MaskError, ValueError):
        pass
    try:
        return ActivationStats.load(path)
    except (StatsError, ValueError) as e:
        raise ValueError(f"{path} is neither a NeuronMasks nor an ActivationStats file: {e}") from None


# ----------------------------------------------------------------------------- overlap


def cmd_overlap(args: argparse.Namespace) -> int:
    masks = NeuronMasks.load(args.masks)
    if args.languages:
        masks = masks.select(args.languages)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = overlap(masks, permutations=args.permutations, seed=args.seed)
    paths = result.save(out / "overlap")
    print(result.table())
    print(
        f"\nmean IoU between languages: {result.mean_overall():.3f}; most similar pairs: "
        + ", ".join(f"{a}-{b} {v:.3f}" for a, b, v in result.top_pairs(3))
    )
    for key, rel in result.relations.items():
        print(
            f"same {key}: mean IoU {rel['mean_same']:.3f} ({rel['same_pairs']} pairs) vs {rel['mean_diff']:.3f} "
            f"({rel['diff_pairs']} pairs); r = {rel['r']:.3f}, Mantel p = {rel['p_value']:.4f}"
        )
    if args.stats:
        stats = ActivationStats.load(args.stats)
        spec = specialization(stats, args.languages or None, threshold=args.threshold)
        paths["specialization"] = spec.save(out / "specialization")["json"]
        mean = spec.mean_by_layer()
        print(
            f"\nspecialised neurons (threshold {args.threshold}): per direction and layer "
            f"{spec.masks.sum(axis=2).mean():.0f} of {stats.num_neurons}; mean IoU by layer: "
            + " ".join(f"{v:.2f}" for v in mean)
        )
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_overlap_parser(sub) -> None:
    p = sub.add_parser(
        "overlap",
        help="IoU of language neuron sets per layer and overall, clustering, script/family",
    )
    p.add_argument("masks", help="a NeuronMasks .npz (e.g. runs/lape_default/masks.npz)")
    p.add_argument(
        "--stats",
        default=None,
        help="ActivationStats .npz: also count neuron specialisation (a > 0 at mlp.act)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.9,
        help="cumulative share kept per direction and layer (Tan et al.)",
    )
    p.add_argument("--languages", nargs="+", default=None, help="restrict to these languages")
    p.add_argument(
        "--permutations",
        type=int,
        default=9999,
        help="Mantel permutations for the script/family tests",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/overlap", help="output directory")
    p.set_defaults(func=cmd_overlap)


# ----------------------------------------------------------------------------- culture


def _mapping(pairs: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--map wants CULTURE=LANG[,LANG...], got {pair!r}")
        c, langs = pair.split("=", 1)
        out[c.strip()] = [x.strip() for x in langs.split(",") if x.strip()]
    return out


def cmd_culture(args: argparse.Namespace) -> int:
    lang_obj, cult_obj = (
        _load_masks_or_stats(args.language),
        _load_masks_or_stats(args.culture),
    )
    mapping = _mapping(args.map) if args.map else {c: [c.split("_")[0]] for c in cult_obj.languages}
    if isinstance(lang_obj, NeuronMasks) != isinstance(cult_obj, NeuronMasks):
        raise ValueError("--language and --culture must both be masks or both be statistics")
    if isinstance(cult_obj, NeuronMasks):
        cmasks = culture_masks(lang_obj, cult_obj, mapping)
    else:
        cmasks = identify_culture_neurons(lang_obj, cult_obj, mapping, top_rate=args.top_rate)
    out = Path(args.out)
    paths = cmasks.save(out / "masks")
    print(cmasks.summary_table())
    if args.model:
        model = models.load_model(args.model, progress=not args.no_progress)
        if args.culture_corpus:
            cult_corpus = Corpus.from_dir(
                args.culture_corpus,
                split="heldout",
                languages=list(cmasks.culture.languages),
            )
        else:  # the demonstration set for these cultures (Faker locales)
            cult_corpus = culture_corpus("heldout", {c: ls[0] for c, ls in cmasks.culture_languages.items()})
        langs = list(dict.fromkeys(l for ls in cmasks.culture_languages.values() for l in ls))
        lang_corpus = resolve_corpus(args.language_corpus, langs, "heldout")
        res = culture_ppl(
            model,
            cmasks,
            cult_corpus,
            lang_corpus,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            max_tokens=args.max_tokens,
            progress=not args.no_progress,
        )
        paths.update(res.save(out / "culture_ppl"))
        for kind in cmasks.KINDS:
            print(f"\n{res.table(kind)}\nown vs other: {res.own_vs_other(kind)}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_culture_parser(sub) -> None:
    p = sub.add_parser("culture", help="compound / pure / generic culture neurons (Namazifard & Galke)")
    p.add_argument(
        "--language",
        required=True,
        help="language LAPE masks .npz, or language statistics .npz",
    )
    p.add_argument(
        "--culture",
        required=True,
        help="culture LAPE masks .npz, or culture statistics .npz",
    )
    p.add_argument(
        "--map",
        nargs="+",
        default=None,
        metavar="CULTURE=LANG",
        help="culture -> language(s), e.g. de_DE=de en_GB=en (default: the part before '_')",
    )
    p.add_argument(
        "--top-rate",
        type=float,
        default=0.01,
        help="LAPE top_rate when statistics are given",
    )
    p.add_argument(
        "--model",
        default=None,
        help="also compute ΔPPL matrices with this model (e.g. default)",
    )
    p.add_argument(
        "--culture-corpus",
        default=None,
        help="directory with heldout/{culture}.txt (for --model; default: the demonstration set)",
    )
    p.add_argument(
        "--language-corpus",
        default="default",
        help='"default" or a directory with heldout/{lang}.txt',
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=None, help="per evaluated column")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="runs/culture", help="output directory")
    p.set_defaults(func=cmd_culture)


def cmd_culture_corpus(args: argparse.Namespace) -> int:
    cultures = _mapping(args.cultures) if args.cultures and "=" in args.cultures[0] else args.cultures
    if isinstance(cultures, dict):
        cultures = {c: ls[0] for c, ls in cultures.items()}
    root = ensure_culture_corpus(
        cultures, path=args.out, train_lines=args.train_lines, heldout_lines=args.heldout_lines, seed=args.seed
    )
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    print(manifest["what"])
    for c, info in manifest["counts"].items():
        print(
            f"{c:<8}{info['language']:<5}{info['train_lines']:>6} train {info['heldout_lines']:>5} held-out   "
            f"{info['example']}"
        )
    print(f"in {root}")
    return 0


def add_culture_corpus_parser(sub) -> None:
    p = sub.add_parser(
        "culture-corpus",
        help="build the demonstration culture corpus (Faker locale data)",
    )
    p.add_argument(
        "--cultures",
        nargs="+",
        default=None,
        help="Faker locales (de_DE ...) or CULTURE=LANG pairs; default: en_US en_GB de_DE ru_RU zh_CN ja_JP",
    )
    p.add_argument("--train-lines", type=int, default=400)
    p.add_argument("--heldout-lines", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        default=None,
        help="directory (default: the cache, ~/.cache/jlang/corpora/)",
    )
    p.set_defaults(func=cmd_culture_corpus)


# ----------------------------------------------------------------------------- codemix


def cmd_codemix(args: argparse.Namespace) -> int:
    cm = build_codemix(
        read_parallel(args.parallel), args.bases, args.partners, args.ratios, seed=args.seed, max_rows=args.max_rows
    )
    cm.save(args.out)
    for name in cm.names():
        i = cm.info[name]
        print(f"{name:<14} {i['sentences']} sentences, {i['replaced_share']:.3f} of words replaced: {cm.sets[name][0]}")
    print(f"wrote {args.out} ({cm.rows} parallel rows)")
    return 0


def add_codemix_parser(sub) -> None:
    p = sub.add_parser("codemix", help="code-mixed sentences from a parallel corpus at mixing ratios")
    p.add_argument(
        "--parallel",
        default=None,
        help="parallel JSONL (default: the default corpus's held-out rows)",
    )
    p.add_argument(
        "--bases",
        nargs="+",
        default=["fr", "zh"],
        help="base languages (Aya-23: fr zh)",
    )
    p.add_argument(
        "--partners",
        nargs="+",
        default=["en", "es", "ja", "ko"],
        help="mixed-in languages",
    )
    p.add_argument(
        "--ratios",
        nargs="+",
        type=float,
        default=[0.25, 0.5, 0.75],
        help="share of base words replaced",
    )
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory ({set}.txt + codemix.json)")
    p.set_defaults(func=cmd_codemix)


COMMANDS: list[Callable] = [
    add_overlap_parser,
    add_culture_parser,
    add_culture_corpus_parser,
    add_codemix_parser,
]
