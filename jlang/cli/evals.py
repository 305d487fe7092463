"""Sub-commands of the `jlang` command for the evaluations (`jlang.evals`): ppl, steer, lss, lens.

Each is `add_xxx_parser(sub)` + `cmd_xxx(args)`; `COMMANDS` lists the parser
builders for `jlang.cli.app` to register. Every command writes
`{out}/{name}.json` and `{out}/{name}.png` and prints a short table.

Every command runs unchanged on several processes (`--coordinator/--num-processes/
--process-id` or `--distributed`, see `jlang.parallel.distributed`): the mesh spans every
process's devices, every process computes the same result, and process 0 alone
prints it and writes the files.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from jlang.cli.common import (
    DEFAULT_MASKS,
    DEFAULT_STATS,
    MODEL_HELP,
    add_model_args,
    corpus_texts,
    load_corpus,
    load_model_and_masks,
    load_stats,
    show_progress,
)
from jlang.config import CorpusSection
from jlang.edits import deactivate
from jlang.evals.langid import Py3LangID, identifier_accuracy
from jlang.evals.logit_lens import logit_lens
from jlang.evals.lss import DEFAULT_TEMPLATE as LSS_TEMPLATE
from jlang.evals.lss import cloze_items, lss, read_parallel
from jlang.evals.perplexity import ppl_matrix
from jlang.evals.steering import DEFAULT_TEMPLATE as STEERING_TEMPLATE
from jlang.evals.steering import Activation, default_generator, run_steering, steering_prompts
from jlang.evals.token_lang import TokenTagger, token_counts
from jlang.parallel import distributed


def _common(p: argparse.ArgumentParser, *, masks_required: bool = True) -> None:
    p.add_argument("--model", default="default", help=MODEL_HELP)
    p.add_argument("--masks", default=DEFAULT_MASKS if masks_required else None, help="a masks .npz (NeuronMasks)")
    p.add_argument(
        "--corpus", default="default", help='"default" or a directory of {lang}.txt files (with a heldout/ split)'
    )
    p.add_argument("--split", default="heldout", choices=["train", "heldout"])
    p.add_argument("--languages", nargs="+", default=None, help="languages (default: the masks' languages)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--vocab-chunk", type=int, default=16384, help="vocabulary chunk of the chunked unembedding")
    p.add_argument("--no-progress", action="store_true")
    add_model_args(p)
    distributed.add_arguments(p, suppress_defaults=True)


def _languages(args, masks) -> list[str]:
    """`--languages`, else the masks' languages, else the default corpus's."""
    if args.languages:
        return list(args.languages)
    if masks is not None:
        return list(masks.languages)
    return list(CorpusSection.languages)


# ----------------------------------------------------------------------------- ppl


def cmd_ppl(args: argparse.Namespace) -> int:
    model, masks = load_model_and_masks(args)
    languages = _languages(args, masks)
    result = ppl_matrix(
        model,
        masks,
        load_corpus(args, languages),
        languages=languages,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        mode=args.mode,
        edit_value=args.edit_value,
        vocab_chunk=args.vocab_chunk,
        max_tokens=args.max_tokens,
        progress=show_progress(args),
    )
    if not distributed.is_primary():  # every process holds the same matrix; process 0 reports it
        return 0
    paths = result.save(Path(args.out) / "ppl")
    print(result.table("ppl"))
    print()
    print(result.table("delta_ppl"))
    dom = result.diagonal_dominance()
    print(
        f"\ndiagonal dominates its row for {dom['row_dominant']}/{dom['languages']} languages, its column for "
        f"{dom['col_dominant']}/{dom['languages']}; "
        f"median ΔPPL[k,k] / max_j≠k ΔPPL[k,j] = {dom['median_ratio_max']:.2f}"
    )
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_ppl_parser(sub) -> None:
    p = sub.add_parser("ppl", help="perplexity matrix with each language's neurons deactivated (LAPE)")
    _common(p)
    p.add_argument(
        "--mode", default="pad", choices=["pad", "pack"], help="pad: one sentence per row; pack: LAPE windows"
    )
    p.add_argument("--batch-size", type=int, default=16, help="rows per batch (per data shard on several processes)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--edit-value", type=float, default=0.0, help="value of deactivated neurons (LAPE: 0)")
    p.add_argument("--max-tokens", type=int, default=None, help="per-language token cap")
    p.set_defaults(func=cmd_ppl)


# ----------------------------------------------------------------------------- steer


def _deactivate_value(text: str) -> float | None:
    return None if text.lower() in ("none", "off") else float(text)


def cmd_steer(args: argparse.Namespace) -> int:
    model, masks = load_model_and_masks(args)
    languages = _languages(args, masks)
    targets = args.targets or languages
    study = sorted(set(languages) | set(targets))
    corpus = load_corpus(args, study)
    texts = corpus_texts(corpus, study)
    stats = load_stats(args.stats) if args.activation == "additive" else None
    identify = Py3LangID(study)
    generate, how = default_generator(
        model, max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty
    )
    result = run_steering(
        masks,
        steering_prompts({l: texts[l] for l in languages}, args.prompts_per_language, args.template),
        generate=generate,
        identify=identify,
        targets=targets,
        deactivate_value=_deactivate_value(args.deactivate_value),
        activation=Activation(args.activation, args.strength),
        stats=stats,
        progress=show_progress(args),
        meta={
            "model": model.name,
            "source": model.source,
            "generator": how,
            "identifier": identify.name,
            "max_new_tokens": args.max_new_tokens,
        },
    )
    if not distributed.is_primary():  # every process generated the same texts; process 0 reports them
        return 0
    if not args.no_identifier_accuracy:
        result.identifier_accuracy = identifier_accuracy(identify, texts)
    paths = result.save(Path(args.out) / "steering")
    print(result.table())
    print(f"\nmean success {result.mean_success():.3f}")
    if result.identifier_accuracy:
        acc = result.identifier_accuracy
        print(
            f"identifier accuracy on the {args.split} sentences: macro {acc['macro']:.3f} ("
            + ", ".join(f"{l} {v:.2f}" for l, v in acc["per_language"].items())
            + ")"
        )
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_steer_parser(sub) -> None:
    p = sub.add_parser("steer", help="steer generations to a language (deactivate the prompt's, activate the target's)")
    _common(p)
    p.add_argument(
        "--stats", default=DEFAULT_STATS, help="ActivationStats (mean activations) for --activation additive"
    )
    p.add_argument("--targets", nargs="+", default=None, help="activated languages (default: --languages)")
    p.add_argument("--activation", default="additive", choices=["additive", "scale"])
    p.add_argument("--strength", type=float, default=1.0, help="additive: a += s*mu_t; scale: a *= s")
    p.add_argument("--deactivate-value", default="0", help='value for the prompt language\'s neurons, or "none"')
    p.add_argument("--prompts-per-language", type=int, default=6)
    p.add_argument("--template", default=STEERING_TEMPLATE)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--no-identifier-accuracy", action="store_true", help="skip the identifier's accuracy on the corpus")
    p.set_defaults(func=cmd_steer)


# ----------------------------------------------------------------------------- lss


def cmd_lss(args: argparse.Namespace) -> int:
    model, masks = load_model_and_masks(args)
    languages = _languages(args, masks)
    rows = read_parallel(None if args.parallel in (None, "default") else args.parallel)
    bases = args.bases or languages
    targets = args.targets or languages
    items = [
        it
        for b in bases
        for t in targets
        if b != t
        for it in cloze_items(rows, b, t, n=args.items, template=args.template)
    ]
    if not items:
        raise ValueError("no cloze item: the parallel file has no rows with both languages of any pair")
    stats = load_stats(args.stats) if args.intervention == "additive" else None
    result = lss(
        model,
        masks,
        items,
        factors=args.factors,
        intervention=args.intervention,
        stats=stats,
        batch_size=args.batch_size,
        vocab_chunk=args.vocab_chunk,
        progress=show_progress(args),
    )
    if not distributed.is_primary():  # every process holds the same scores; process 0 reports them
        return 0
    paths = result.save(Path(args.out) / "lss")
    for f, m in zip(result.factors, result.mean_lss()):
        print(f"{result.strength_label(f)}: mean LSS {m:.3f}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_lss_parser(sub) -> None:
    p = sub.add_parser("lss", help="Language Steering Score: amplify the target's neurons (difference of differences)")
    _common(p)
    p.add_argument("--parallel", default="default", help='parallel JSONL ({"text": {lang: message}}), or "default"')
    p.add_argument("--bases", nargs="+", default=None)
    p.add_argument("--targets", nargs="+", default=None)
    p.add_argument("--items", type=int, default=20, help="items per language pair")
    p.add_argument(
        "--intervention",
        default="scale",
        choices=["scale", "additive"],
        help="scale: a *= factor (tauimbz '*c'); additive: a += factor * mean activation of the target",
    )
    p.add_argument("--factors", type=float, nargs="+", default=[2.0, 5.0, 10.0], help="strengths of the intervention")
    p.add_argument("--stats", default=DEFAULT_STATS, help="ActivationStats for --intervention additive")
    p.add_argument("--template", default=LSS_TEMPLATE)
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_lss)


# ----------------------------------------------------------------------------- lens


def cmd_lens(args: argparse.Namespace) -> int:
    model, masks = load_model_and_masks(args)
    languages = _languages(args, masks)
    if args.deactivate and masks is None:
        raise ValueError("--deactivate needs --masks")
    counts = None
    if not args.script_only:
        train = load_corpus(args, languages, "train")
        counts = token_counts(train, model.tokenizer, languages, model.config.vocab_size)
    tagger = TokenTagger.from_tokenizer(model.tokenizer, languages, vocab_size=model.config.vocab_size, counts=counts)
    edits = deactivate(masks, args.deactivate) if args.deactivate else None
    result = logit_lens(
        model,
        load_corpus(args, languages),
        languages=languages,
        tagger=tagger,
        k=args.k,
        max_texts=args.max_texts,
        where=args.where,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        vocab_chunk=args.vocab_chunk,
        edits=edits,
        progress=show_progress(args),
    )
    if not distributed.is_primary():  # every process holds the same shares; process 0 reports them
        return 0
    paths = result.save(Path(args.out) / "lens")
    own = result.own_share("final_norm")
    print("share of the prompt's language in the top-k (final norm), layer x language:")
    print("layer " + " ".join(f"{l:>5}" for l in result.languages))
    for l, row in enumerate(own):
        print(f"{l:>5} " + " ".join(f"{x:5.2f}" for x in row))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_lens_parser(sub) -> None:
    p = sub.add_parser("lens", help="logit lens: languages of every layer's top-k tokens")
    _common(p, masks_required=False)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--max-texts", type=int, default=16, help="texts per language")
    p.add_argument("--where", default="all", choices=["all", "last"], help="every position, or each text's last token")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--script-only", action="store_true", help="tag tokens by script only (no train-split frequencies)")
    p.add_argument("--deactivate", default=None, metavar="LANG", help="run the lens with LANG's neurons deactivated")
    p.set_defaults(func=cmd_lens)


COMMANDS: list[Callable] = [add_ppl_parser, add_steer_parser, add_lss_parser, add_lens_parser]
EVAL_COMMANDS = COMMANDS  # the name scripts and tests import
