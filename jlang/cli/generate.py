"""`jlang generate`: continue prompts with a model, optionally with language neurons edited.

`add_generate_parser(sub)` + `cmd_generate(args)`, as every command module. The papers'
setting (LAPE `generation.py`, language arithmetics) is
`--repetition-penalty 1.1 --stop '\\nQ:' --stop '\\nA:'` with greedy decoding.

On several processes (`--coordinator/--num-processes/--process-id` or
`--distributed`, see `jlang.parallel.distributed`) every process reads the same prompts,
each batch is split over every process's devices, and process 0 alone prints
the continuations (and writes `--out`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from jlang import edits
from jlang.cli.common import MODEL_HELP, add_model_args, load_masks, load_model
from jlang.io.atomic import atomic_file
from jlang.models.generate import generate
from jlang.parallel import distributed

_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}


def _unescape(text: str) -> str:
    """`\\n`, `\\t` and `\\\\` typed on a command line, as the characters (stop strings like `\\nQ:`)."""
    out, i = [], 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in _ESCAPES:
            out.append(_ESCAPES[pair])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = [_unescape(p) for p in args.prompt or []]
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompts += [_unescape(line.rstrip("\n")) for line in f if line.strip()]
    if not prompts:
        raise SystemExit("jlang generate: give at least one --prompt (or --prompt-file with one prompt per line)")
    return prompts


def _edits(args: argparse.Namespace, model):
    """Deactivate (`a = value`) the neurons of the `--deactivate` languages of `--masks`, or None."""
    if not args.deactivate:
        if args.masks:
            raise SystemExit("jlang generate: --masks needs --deactivate LANG (which language's neurons to edit)")
        return None
    if not args.masks:
        raise SystemExit("jlang generate: --deactivate needs --masks MASKS.npz")
    masks = load_masks(args.masks)
    langs = [code for item in args.deactivate for code in item.split(",") if code]
    return edits.deactivate(masks, langs if len(langs) > 1 else langs[0], value=args.value, model=model)


def write_jsonl(path: str | Path, prompts: list[str], texts: list[str]) -> Path:
    """`{"prompt", "continuation"}` per line, atomically."""
    lines = [json.dumps({"prompt": p, "continuation": t}, ensure_ascii=False) + "\n" for p, t in zip(prompts, texts)]
    with atomic_file(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    return Path(path)


def cmd_generate(args: argparse.Namespace) -> int:
    prompts = _prompts(args)  # fail before loading the model
    model = load_model(args)  # several processes: on a mesh over all their devices
    primary = distributed.is_primary()
    start = time.perf_counter()
    texts = generate(
        model,
        prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=[_unescape(s) for s in args.stop or []],
        edits=_edits(args, model),
        edit_scope=args.edit_scope,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    seconds = time.perf_counter() - start
    if not primary:  # every process holds the same continuations; process 0 reports them
        return 0
    for prompt, text in zip(prompts, texts):
        if args.json:
            print(json.dumps({"prompt": prompt, "continuation": text}, ensure_ascii=False))
        else:
            print(f"> {prompt}\n{prompt}{text}\n")
    if args.out:
        print(f"wrote {write_jsonl(args.out, prompts, texts)}", file=sys.stderr)
    print(f"{len(prompts)} prompt(s), {seconds:.1f} s (compilation included)", file=sys.stderr)
    return 0


def add_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="continue prompts (greedy or sampled), optionally with neurons deactivated")
    p.add_argument("--model", default="default", help=MODEL_HELP)
    add_model_args(p)
    p.add_argument("--prompt", action="append", help=r"a prompt (repeatable; \n is a newline)")
    p.add_argument("--prompt-file", default=None, help="a text file with one prompt per line")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="the papers use 1.1")
    p.add_argument("--stop", action="append", help=r"a stop string (repeatable), e.g. '\nQ:'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help="prompts per batch (default: all)")
    p.add_argument("--masks", default=None, help="a masks .npz, for --deactivate")
    p.add_argument(
        "--deactivate", action="append", metavar="LANG", help="deactivate this language's neurons (repeatable)"
    )
    p.add_argument("--value", type=float, default=0.0, help="the value deactivated neurons are set to")
    p.add_argument(
        "--edit-scope", default="all", choices=["all", "prompt", "generated"], help="tokens the edit applies to"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    p.add_argument("--out", default=None, help="also write the continuations to this JSONL file (prompt, continuation)")
    distributed.add_arguments(p, suppress_defaults=True)
    p.set_defaults(func=cmd_generate)


COMMANDS: list[Callable] = [add_generate_parser]
