"""`jlang sae train | identify | classify | steer`: sparse autoencoders and SAE-LAPE from the command line.

    jlang sae train --layer 9 --out runs/sae              # TopK SAE on mlp.out of layer 9 -> sae.npz, history, eval
    jlang sae identify --sae runs/sae/sae.npz --out runs/sae --lang-specific   # SAE-LAPE features per language
    jlang sae classify --sae runs/sae/sae.npz --features runs/sae/features.npz --out runs/sae
    jlang sae steer --sae runs/sae/sae.npz --features runs/sae/features.npz --target fr --multiplier 0.5 \\
        --prompt "Q: What is a database?\\nA:"

Every command loads the model named by `--model` (the one the SAE was trained on).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jlang.cli.common import MODEL_HELP, add_model_args, corpus_texts, load_corpus, load_model, show_progress
from jlang.config import CorpusSection
from jlang.io.report import write_json
from jlang.sae.classify import classify
from jlang.sae.evaluation import evaluate
from jlang.sae.lape import FeatureStats, SAELapeFeatures, feature_stats, identify, summary_table, to_jsonable
from jlang.sae.model import SAE, SAEConfig
from jlang.sae.steer import generate_steered, steering_vector, vector_table
from jlang.sae.stream import ActivationStream, load_tokenized, sentence_rows
from jlang.sae.train import TrainConfig, dead_features, save_history, train_sae

DEFAULT_LANGUAGES = list(CorpusSection.languages)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help=MODEL_HELP)
    p.add_argument(
        "--corpus", default="default", help='"default" or a directory of {lang}.txt files (train/ and heldout/ splits)'
    )
    p.add_argument("--languages", nargs="+", default=None, help="languages (default: the 12 of the default corpus)")
    p.add_argument(
        "--keep-bos",
        action="store_true",
        help="count BOS tokens too (default: left out, as they are the same in every text)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_args(p)


def _corpus(args, split: str, languages=None):
    return load_corpus(args, languages or args.languages or DEFAULT_LANGUAGES, split)


def _sentence_rows(model, args, split: str, per_language: int | None, max_len: int, languages=None):
    tok = load_tokenized(model, _corpus(args, split, languages), progress=show_progress(args))
    return tok, sentence_rows(tok, max_len=max_len, max_per_language=per_language)


# ----------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    model = load_model(args)
    sae_cfg = SAEConfig(
        d_in=model.config.d_model,
        num_features=args.features or args.expansion * model.config.d_model,
        kind=args.kind,
        k=args.k,
        layer=args.layer,
        hook_point=args.hook_point,
    )
    cfg = TrainConfig(
        steps=args.steps,
        sae_batch=args.sae_batch,
        reuse=args.reuse,
        lr=args.lr,
        warmup_steps=args.warmup,
        l1_coeff=args.l1_coeff,
        auxk_coeff=args.auxk_coeff,
        dead_window=args.dead_window,
        seed=args.seed,
    )
    tok = load_tokenized(model, _corpus(args, "train"), progress=show_progress(args))
    stream = ActivationStream(
        model,
        tok,
        layer=args.layer,
        point=args.hook_point,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        seed=args.seed,
        skip_bos=not args.keep_bos,
    )
    result = train_sae(
        stream,
        sae_cfg,
        cfg,
        checkpoint_dir=out / "checkpoints",
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        progress=show_progress(args),
        log=print,
    )
    result.sae.save(out / "sae.npz")
    save_history(result.history, out / "history.json")
    metrics = {
        "train": result.history[-1] if result.history else {},
        "dead": dead_features(result.since_fired, cfg.dead_window),
        "steps": result.steps,
        "tokens": result.tokens,
        "seconds": result.seconds,
    }
    if not args.no_eval:
        _, rows = _sentence_rows(model, args, "heldout", args.eval_sentences, 64)
        metrics["eval"] = evaluate(
            model,
            result.sae,
            rows,
            batch_size=args.batch_size,
            vocab_chunk=args.vocab_chunk,
            skip_bos=not args.keep_bos,
            progress=show_progress(args),
        )
    write_json(out / "metrics.json", metrics)
    d = metrics["dead"]
    print(
        f"{result.sae}: {result.steps} steps, {result.tokens:,} tokens, {result.seconds:.0f} s; "
        f"dead {d['dead']}/{d['features']}"
    )
    if "eval" in metrics:
        e = metrics["eval"]
        print(
            f"held-out: MSE {e['mse']:.4g}, explained variance {e['ev']:.3f}, L0 {e['l0']:.1f}, "
            f"NLL {e['nll_clean']:.3f} -> {e['nll_sae']:.3f} (ΔNLL {e['delta_nll']:+.3f}; zero-ablation "
            f"{e['delta_nll_zero']:+.3f}; loss recovered {e['loss_recovered']:.3f})"
        )
    print(f"wrote {out / 'sae.npz'}, {out / 'metrics.json'}, {out / 'history.json'}")
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train an SAE on a hook point's activations streamed from the model")
    _common(p)
    p.add_argument("--out", required=True, help="output directory (sae.npz, metrics.json, history.json, checkpoints/)")
    p.add_argument("--layer", type=int, required=True, help="the layer whose hook point the SAE reads")
    p.add_argument("--hook-point", default="mlp.out", choices=["mlp.out", "resid.post"], help="where the SAE reads")
    p.add_argument("--kind", default="topk", choices=["topk", "relu"], help="TopK (Gao et al.) or ReLU + L1")
    p.add_argument("--features", type=int, default=None, help="dictionary size (default: expansion x d_model)")
    p.add_argument("--expansion", type=int, default=8, help="features per model dimension when --features is not given")
    p.add_argument("--k", type=int, default=32, help="active features per token (topk)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--sae-batch", type=int, default=256, help="tokens per optimizer step")
    p.add_argument("--reuse", type=int, default=1, help="optimizer passes over each model batch's tokens")
    p.add_argument("--lr", type=float, default=4e-4, help="Adam learning rate")
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    p.add_argument("--l1-coeff", type=float, default=2.0, help="L1 weight (relu)")
    p.add_argument("--auxk-coeff", type=float, default=1 / 32, help="AuxK weight (topk)")
    p.add_argument("--dead-window", type=int, default=50_000, help="a feature silent for this many tokens is dead")
    p.add_argument("--batch-size", type=int, default=8, help="model rows per batch")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per model row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=200, help="checkpoint every this many steps")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT/checkpoints")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation (MSE, EV, ΔNLL)")
    p.add_argument("--eval-sentences", type=int, default=40, help="held-out sentences per language for the evaluation")
    p.add_argument("--vocab-chunk", type=int, default=16384, help="vocabulary chunk of the log-softmax")
    p.set_defaults(func=cmd_train)


# ----------------------------------------------------------------------------- identify


def cmd_identify(args: argparse.Namespace) -> int:
    out = Path(args.out)
    sae = SAE.load(args.sae)
    if args.stats:
        stats = FeatureStats.load(args.stats)
    else:
        model = load_model(args)
        tok, rows = _sentence_rows(model, args, args.split, args.sentences_per_language, args.max_len)
        stats = feature_stats(
            model,
            sae,
            rows,
            list(tok.languages),
            batch_size=args.batch_size,
            skip_bos=not args.keep_bos,
            progress=show_progress(args),
            meta={"split": args.split},
        )
        stats.save(out / "stats.npz")
    result = identify(
        stats,
        threshold_ratio=args.threshold_ratio,
        example_rate=args.example_rate,
        token_rate=args.token_rate,
        lang_specific=args.lang_specific,
        top=args.top,
        top_by_frequency=args.top_by_frequency,
        top_per_layer=args.top_per_layer,
        entropy_threshold=args.entropy_threshold,
    )
    result.save(out / "features.npz")
    write_json(out / "features.json", to_jsonable(result))
    print(f"{int(result.candidates.sum())} candidate features pass the filter")
    print(summary_table(result))
    print(f"wrote {out / 'features.npz'}, {out / 'features.json'}")
    return 0


def add_identify_parser(sub) -> None:
    p = sub.add_parser("identify", help="SAE-LAPE: feature statistics per language and language-specific features")
    _common(p)
    p.add_argument("--sae", required=True, help="an SAE .npz (jlang sae train)")
    p.add_argument("--out", required=True, help="output directory (stats.npz, features.npz, features.json)")
    p.add_argument("--stats", default=None, help="reuse a stats.npz instead of running the model")
    p.add_argument("--split", default="train", choices=["train", "heldout"], help="corpus split of the statistics")
    p.add_argument("--sentences-per-language", type=int, default=None, help="cap on examples per language")
    p.add_argument("--max-len", type=int, default=64, help="tokens per example (longer ones are cut)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--threshold-ratio", type=float, default=0.5, help="assign f to k when p_k >= ratio x max p (scripts: 0.5)"
    )
    p.add_argument(
        "--example-rate", type=float, default=0.98, help="candidate: fires in this share of some language's examples"
    )
    p.add_argument(
        "--token-rate",
        type=float,
        default=0.1,
        help="candidate: fires on more than this share of some language's tokens",
    )
    p.add_argument("--lang-specific", action="store_true", help="drop features assigned to more than one language")
    p.add_argument("--top", type=int, default=None, help="keep the N lowest-entropy features per language")
    p.add_argument("--top-by-frequency", action="store_true", help="--top by activation probability instead of entropy")
    p.add_argument("--top-per-layer", action="store_true", help="--top per layer")
    p.add_argument("--entropy-threshold", type=float, default=None, help="keep features with entropy <= this")
    p.set_defaults(func=cmd_identify)


# ----------------------------------------------------------------------------- classify


def cmd_classify(args: argparse.Namespace) -> int:
    out = Path(args.out)
    sae, features = SAE.load(args.sae), SAELapeFeatures.load(args.features)
    model = load_model(args)
    languages = args.languages or features.languages
    corpus = _corpus(args, args.split, languages)
    texts = corpus_texts(corpus, languages, limit=args.sentences_per_language)
    result = classify(
        model,
        sae,
        features,
        texts,
        batch_size=args.batch_size,
        skip_bos=not args.keep_bos,
        progress=show_progress(args),
    )
    result.save(out / "classify.json")
    result.plot(out / "classify.png")
    print(result.table())
    print(f"{result.silent} examples with no language feature firing (predicted as {features.languages[0]})")
    print(f"wrote {out / 'classify.json'}, {out / 'classify.png'}")
    return 0


def add_classify_parser(sub) -> None:
    p = sub.add_parser(
        "classify", help="language ID from SAE-LAPE feature counts (sae-count, sae-min-max) vs py3langid"
    )
    _common(p)
    p.add_argument("--sae", required=True, help="an SAE .npz")
    p.add_argument("--features", required=True, help="a features.npz (jlang sae identify)")
    p.add_argument("--out", required=True, help="output directory (classify.json, classify.png)")
    p.add_argument("--split", default="heldout", choices=["train", "heldout"])
    p.add_argument("--sentences-per-language", type=int, default=None, help="cap on sentences per language")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_classify)


# ----------------------------------------------------------------------------- steer


def cmd_steer(args: argparse.Namespace) -> int:
    sae, features = SAE.load(args.sae), SAELapeFeatures.load(args.features)
    model = load_model(args)
    prompts = [p.replace("\\n", "\n") for p in args.prompt]
    vec = steering_vector(sae, features, args.target, args.multiplier)
    table = np.repeat(vector_table(vec, sae.config.layer, model.num_layers), len(prompts), axis=0)
    none = np.zeros_like(table)
    plain = generate_steered(
        model,
        prompts,
        none,
        hook_point=sae.config.hook_point,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
    )
    steered = generate_steered(
        model,
        prompts,
        table,
        hook_point=sae.config.hook_point,
        where=args.where,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
    )
    n = len(features.features[features.index(args.target)][features.layers.index(sae.config.layer)])
    print(f"steering towards {args.target}: {n} features, m = {args.multiplier:g}, |v| = {np.linalg.norm(vec):.2f}")
    for p, a, b in zip(prompts, plain, steered):
        print(f"\n> {p}\n  plain:   {a!r}\n  steered: {b!r}")
    return 0


def add_steer_parser(sub) -> None:
    p = sub.add_parser("steer", help="generate with h += m * maxact_f * W_dec[f] for a language's SAE-LAPE features")
    _common(p)
    p.add_argument("--sae", required=True, help="an SAE .npz")
    p.add_argument("--features", required=True, help="a features.npz (jlang sae identify)")
    p.add_argument("--target", required=True, help="the language to steer towards")
    p.add_argument("--multiplier", type=float, default=0.5, help="m (negative suppresses the language)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable; \\n for a newline)")
    p.add_argument("--where", default="all", choices=["all", "last"], help="steer every token, or the prompt's last")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.set_defaults(func=cmd_steer)


def add_sae_parser(sub) -> None:
    p = sub.add_parser("sae", help="sparse autoencoders and SAE-LAPE (train, identify, classify, steer)")
    inner = p.add_subparsers(dest="sae_command", required=True, metavar="{train,identify,classify,steer}")
    for build in (add_train_parser, add_identify_parser, add_classify_parser, add_steer_parser):
        build(inner)


COMMANDS: list[Callable] = [add_sae_parser]
