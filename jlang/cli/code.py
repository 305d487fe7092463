"""Sub-commands for programming-language neurons (Kargaran et al. 2025): the code corpus and the keyword lens.

    jlang code-corpus [--out DIR] [--languages python c cpp ...] [--tokens-for default]
    jlang code-lens --out DIR [--model default] [--corpus code-default] [--k 10]

The neurons themselves come from the usual chain on the code corpus
(`jlang stats --corpus DIR`, `jlang identify`), or all at once from
`python experiments/code_neurons.py configs/code_neurons.yaml`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from jlang import models
from jlang.analysis.code_lens import keyword_lens
from jlang.cli.common import add_model_args, corpus_texts, load_masks, load_model, show_progress
from jlang.data.corpora.code import (
    DEFAULT_CODE_LANGUAGES,
    CodeCorpusError,
    code_corpus,
    count_code_tokens,
    ensure_code_corpus,
    format_code_summary,
)
from jlang.edits import deactivate

DEFAULT_CORPUS = "code-default"


def cmd_code_corpus(args: argparse.Namespace) -> int:
    kwargs = {}
    if args.languages:
        kwargs["languages"] = list(args.languages)
    if args.packages:
        kwargs["packages"] = list(args.packages)
    if args.site_dirs:
        kwargs["site_dirs"] = list(args.site_dirs)
    if args.max_chars is not None:
        kwargs["max_chars_per_language"] = args.max_chars
    if args.min_chars is not None:
        kwargs["min_chars"] = args.min_chars
    if args.english != "gettext":
        kwargs["english"] = None if args.english == "none" else args.english
        if kwargs["english"] is None:
            kwargs.setdefault("languages", [l for l in DEFAULT_CODE_LANGUAGES if l != "english"])
    if args.no_stdlib:
        kwargs["stdlib"] = False
    if args.no_python_include:
        kwargs["python_include"] = False
    if args.cargo_registry is not None:
        kwargs["cargo_registry"] = args.cargo_registry or None
    try:
        root = ensure_code_corpus(args.out, rebuild=args.rebuild, progress=not args.no_progress, **kwargs)
    except CodeCorpusError as e:
        raise SystemExit(f"jlang code-corpus: {e}") from None
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    print(format_code_summary(manifest))
    if args.tokens_for:
        model = models.load_model(args.tokens_for, progress=not args.no_progress)
        for split in ("train", "heldout"):
            counts = count_code_tokens(root, model.tokenizer, split=split)
            print(f"{split} tokens ({model.name}): " + ", ".join(f"{l} {n:,}" for l, n in counts.items()))
    print(f"corpus: {root}")
    return 0


def add_code_corpus_parser(sub) -> None:
    p = sub.add_parser(
        "code-corpus",
        help="build the programming-language corpus from installed source files",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default: jlang's cache, built once)",
    )
    p.add_argument(
        "--languages",
        nargs="+",
        default=None,
        help="python c cpp javascript typescript html css rust go java english (default: python c cpp "
        "javascript html css rust english)",
    )
    p.add_argument(
        "--packages",
        nargs="+",
        default=None,
        help="only these installed distributions (default: all)",
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help="train characters per language (default 400,000)",
    )
    p.add_argument(
        "--min-chars",
        type=int,
        default=None,
        help="shortest file kept, in characters (default 200)",
    )
    p.add_argument(
        "--english", default="gettext", help='"gettext" (the default corpus\'s English), a text file, or "none"'
    )
    p.add_argument(
        "--site-dirs",
        nargs="+",
        default=None,
        help="site-packages directories (default: this Python's)",
    )
    p.add_argument("--no-stdlib", action="store_true", help="leave out the Python standard library")
    p.add_argument("--no-python-include", action="store_true", help="leave out CPython's C headers")
    p.add_argument(
        "--cargo-registry",
        default=None,
        help="directory of unpacked Rust crates (default /usr/share/cargo/registry; '' for none)",
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="build again even if the cached corpus matches",
    )
    p.add_argument(
        "--tokens-for",
        default=None,
        metavar="MODEL",
        help="also report tokens per language for MODEL",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_code_corpus)


def cmd_code_lens(args: argparse.Namespace) -> int:
    path = None if args.corpus == DEFAULT_CORPUS else Path(args.corpus)
    try:
        corpus = code_corpus(args.split, args.languages, path=path)
    except CodeCorpusError as e:
        raise SystemExit(f"jlang code-lens: {e}") from None
    texts = corpus_texts(corpus, corpus.languages, limit=args.texts)
    model = load_model(args)
    edits = None
    if args.deactivate:
        if not args.masks:
            raise SystemExit("jlang code-lens: --deactivate needs --masks")
        masks = load_masks(args.masks)
        masks.check_fits(model.num_layers, model.num_neurons, model=model.name)
        edits = deactivate(masks, args.deactivate)
    res = keyword_lens(
        model,
        texts,
        k=args.k,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        vocab_chunk=args.vocab_chunk,
        edits=edits,
        progress=show_progress(args),
    )
    paths = res.save(Path(args.out) / "code_lens")
    own, excl = res.own("shares"), res.own("exclusive")
    print("own-language keyword share in the top-k (exclusive in brackets), per layer:")
    print("layer " + " ".join(f"{l:>16}" for l in res.languages))
    for l in range(own.shape[0]):
        print(f"{l:>5} " + " ".join(f"{own[l, p]:>7.3f} ({excl[l, p]:.3f})" for p in range(len(res.languages))))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_code_lens_parser(sub) -> None:
    p = sub.add_parser(
        "code-lens",
        help="logit lens over code: keyword shares of every layer's top-k tokens",
    )
    p.add_argument(
        "--model",
        default="default",
        help='"default", "smollm2", an HF directory, a .gguf or a checkpoint',
    )
    p.add_argument(
        "--corpus",
        default=DEFAULT_CORPUS,
        help='"code-default" or a directory from `jlang code-corpus --out`',
    )
    p.add_argument("--split", default="heldout", choices=["train", "heldout"])
    p.add_argument(
        "--languages",
        nargs="+",
        default=None,
        help="text languages (default: all in the corpus)",
    )
    p.add_argument("--texts", type=int, default=6, help="files per language")
    p.add_argument("--k", type=int, default=10, help="top-k tokens per position and layer")
    p.add_argument(
        "--seq-len",
        type=int,
        default=48,
        help="BOS + this many - 1 tokens from the middle of each file",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--vocab-chunk",
        type=int,
        default=16384,
        help="vocabulary chunk of the chunked unembedding",
    )
    p.add_argument("--masks", default=None, help="a masks .npz, with --deactivate")
    p.add_argument(
        "--deactivate",
        default=None,
        metavar="LANG",
        help="decode with LANG's neurons set to 0",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-progress", action="store_true")
    add_model_args(p)
    p.set_defaults(func=cmd_code_lens)


COMMANDS: list[Callable] = [add_code_corpus_parser, add_code_lens_parser]
