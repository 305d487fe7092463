"""Sub-commands for the arithmetic studies: `jlang fallback` (the fallback experiment) and `jlang mc` (multiple choice).

Each is `add_xxx_parser(sub)` + `cmd_xxx(args)`, and writes `{out}/{name}.json`
and `{out}/{name}.png`; `COMMANDS` lists the parser builders for `jlang.cli.app` to register.
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
from jlang.evals.fallback import IDENTIFY_LANGUAGES, run_fallback
from jlang.evals.langid import Py3LangID
from jlang.evals.lss import read_parallel
from jlang.evals.multiple_choice import DEFAULT_TEMPLATE as MC_TEMPLATE
from jlang.evals.multiple_choice import Condition, build_items, run_multiple_choice
from jlang.evals.steering import DEFAULT_TEMPLATE as STEERING_TEMPLATE
from jlang.evals.steering import default_generator, steering_prompts


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help=MODEL_HELP)
    p.add_argument("--masks", default=DEFAULT_MASKS, help="a masks .npz (NeuronMasks)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_args(p)


# ----------------------------------------------------------------------------- fallback


def _order(text: str):
    """`paper`, `count`, `mask`, or a comma-separated list of languages."""
    return text if text in ("paper", "count", "mask") else [x for x in text.split(",") if x]


def cmd_fallback(args: argparse.Namespace) -> int:
    model, masks = load_model_and_masks(args)
    texts = corpus_texts(load_corpus(args, args.prompt_languages), args.prompt_languages)
    prompts = steering_prompts(texts, args.prompts_per_language, args.template)
    languages = args.identify_languages or list(dict.fromkeys([*IDENTIFY_LANGUAGES, *masks.languages]))
    identify = Py3LangID(languages)
    generate, how = default_generator(
        model,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
    )
    result = run_fallback(
        masks,
        prompts,
        generate=generate,
        identify=identify,
        order=_order(args.order),
        prompt_first=not args.no_prompt_first,
        max_steps=args.max_steps,
        value=args.deactivate_value,
        progress=show_progress(args),
        meta={
            "model": model.name,
            "source": model.source,
            "generator": how,
            "identifier": f"{identify.name} over {languages}",
            "template": args.template,
            "max_new_tokens": args.max_new_tokens,
        },
    )
    paths = result.save(Path(args.out) / "fallback")
    print(result.table())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_fallback_parser(sub) -> None:
    p = sub.add_parser(
        "fallback",
        help="deactivate more and more languages' neurons; which language does the model fall back to?",
    )
    _model_args(p)
    p.add_argument(
        "--corpus",
        default="default",
        help='"default" or a directory of {lang}.txt files (prompts)',
    )
    p.add_argument(
        "--split",
        default="heldout",
        choices=["train", "heldout"],
        help="corpus split the prompts come from",
    )
    p.add_argument("--prompt-languages", nargs="+", default=["en"], help="languages of the prompts")
    p.add_argument("--prompts-per-language", type=int, default=6)
    p.add_argument("--template", default=STEERING_TEMPLATE, help="prompt template with {text}")
    p.add_argument(
        "--order",
        default="paper",
        help="deactivation order: paper (Language Arithmetics' en fr es it pt ru de ar zh ko ja, then the "
        "masks' others), count (most neurons first), mask, or a comma-separated list",
    )
    p.add_argument(
        "--no-prompt-first",
        action="store_true",
        help="do not deactivate the prompt's own language first",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="deactivate at most this many languages",
    )
    p.add_argument(
        "--deactivate-value",
        type=float,
        default=-1.5,
        help="value of deactivated neurons (paper -1.5; LAPE 0)",
    )
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument(
        "--identify-languages",
        nargs="+",
        default=None,
        help="languages py3langid may answer (default: Language Arithmetics' 21 minus bo, plus the masks')",
    )
    p.set_defaults(func=cmd_fallback)


# ----------------------------------------------------------------------------- multiple choice


def _pair(text: str) -> tuple[str, str]:
    src, sep, tgt = text.partition(":")
    if not sep or not src or not tgt:
        raise argparse.ArgumentTypeError(f"a pair is SOURCE:TARGET, e.g. en:fr; got {text!r}")
    return src, tgt


def cmd_mc(args: argparse.Namespace) -> int:
    conditions = [Condition.parse(c) for c in args.conditions]
    rows = read_parallel(None if args.parallel in (None, "default") else args.parallel)
    items = [
        it
        for s, t in args.pairs
        for it in build_items(
            rows,
            s,
            t,
            n=args.items,
            options=args.options,
            seed=args.seed,
            max_chars=args.max_chars,
        )
    ]
    if not items:
        raise ValueError("no multiple-choice item: the parallel file has no row with both languages of any pair")
    model, masks = load_model_and_masks(args)
    stats = load_stats(args.stats) if any(c.kind == "additive" for c in conditions) else None
    result = run_multiple_choice(
        model,
        masks,
        items,
        conditions=conditions,
        stats=stats,
        template=args.template,
        batch_size=args.batch_size,
        vocab_chunk=args.vocab_chunk,
        progress=show_progress(args),
    )
    paths = result.save(Path(args.out) / "mc")
    for norm in ("sum", "token"):
        print(f"accuracy ({norm}):\n{result.table(norm)}\n")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_mc_parser(sub) -> None:
    p = sub.add_parser(
        "mc",
        help="multiple-choice translation task from parallel sentences, with and without neuron edits",
    )
    _model_args(p)
    p.add_argument(
        "--stats",
        default=DEFAULT_STATS,
        help="ActivationStats (mean activations) for additive conditions",
    )
    p.add_argument(
        "--parallel",
        default="default",
        help='parallel JSONL ({"text": {lang: message}}), or "default"',
    )
    p.add_argument(
        "--pairs",
        nargs="+",
        type=_pair,
        default=[("en", "fr")],
        help="SOURCE:TARGET language pairs",
    )
    p.add_argument("--items", type=int, default=20, help="questions per pair")
    p.add_argument("--options", type=int, default=4, help="options per question (1 correct)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the distractors and answer positions",
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help="only questions and options of at most this many characters",
    )
    p.add_argument(
        "--conditions",
        nargs="+",
        default=["none", "deactivate=0", "scale=2", "additive=1"],
        help="none, [source:]deactivate[=v], [source:]scale=c, [source:]additive=a (on the answer "
        "language's neurons unless prefixed source:)",
    )
    p.add_argument(
        "--template",
        default=MC_TEMPLATE,
        help="prompt with {source_name} {target_name} {question}",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--vocab-chunk",
        type=int,
        default=16384,
        help="vocabulary chunk of the chunked unembedding",
    )
    p.set_defaults(func=cmd_mc)


COMMANDS: list[Callable] = [add_fallback_parser, add_mc_parser]
