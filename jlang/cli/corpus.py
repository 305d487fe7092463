"""`jlang corpus build`: the packaged multilingual corpus (human translations from installed gettext catalogs)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from jlang import models
from jlang.data.corpora import gettext


def cmd_corpus_build(args: argparse.Namespace) -> int:
    out = args.out or gettext.default_corpus_dir()
    if args.out is None:
        path = gettext.ensure_default_corpus(out)
        manifest = json.loads((path / "manifest.json").read_text())
    else:
        manifest = gettext.build_gettext_corpus(out, languages=args.languages or gettext.DEFAULT_LANGUAGES)
    print(gettext.format_summary(manifest))
    if args.tokens_for:
        model = models.load_model(args.tokens_for, progress=False)
        counts = gettext.count_tokens(out, model.tokenizer)
        print(f"\ntokens per language ({model.name} tokenizer, train split):")
        for lang, n in counts.items():
            print(f"  {lang:<4} {n:>10,}")
    return 0


def add_corpus_parser(sub) -> None:
    p = sub.add_parser("corpus", help="build the packaged multilingual corpus")
    csub = p.add_subparsers(dest="corpus_command", required=True, metavar="ACTION")
    b = csub.add_parser("build", help="extract human translations from installed gettext catalogs")
    b.add_argument("--out", default=None, help="output directory (default: jlang's cache, built once)")
    b.add_argument("--languages", nargs="+", default=None, help="language codes (default: the 12 default languages)")
    b.add_argument("--tokens-for", default=None, metavar="MODEL", help="also report tokens per language for MODEL")
    b.set_defaults(func=cmd_corpus_build)


COMMANDS: list[Callable] = [add_corpus_parser]
