"""SAE-LAPE (Andrylie et al. 2025) on the default model: a TopK SAE, language-specific features, language ID, steering.

    python experiments/sae_lape.py configs/sae_default.yaml [--set train.steps=500 ...]

Steps (each writes under `config.out`):

1. `sae.npz`, `history.json`, `train.png`: a TopK SAE trained on `mlp.out` of one
   middle layer, on activations streamed from the model over the train split
   (`jlang.sae.train`; checkpointed, and resumed when `checkpoint.resume`).
   With `reuse_sae` an existing `sae.npz` of the same settings is loaded instead.
2. `eval.json`: on held-out sentences, MSE, explained variance, L0, and the
   next-token NLL clean / with the SAE spliced in / with `mlp.out` of that layer zeroed.
3. `stats.npz`, `features.npz|json`, `features.png`: SAE-LAPE statistics on the
   train split and the language-specific features (`jlang.sae.lape`).
4. `classify.json|png`: language ID of the held-out sentences from feature counts
   (sae-count, sae-min-max) vs py3langid (`jlang.sae.classify`).
5. `steering.json|png`: prompts in one language steered towards others with
   `h += m * maxact_f * W_dec[f]` (`jlang.sae.steer`), judged by py3langid.
6. `report.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

import numpy as np
import yaml

import jlang
from jlang import config as config_lib
from jlang.data.sources import read_documents, resolve_corpus
from jlang.io.report import new_figure, save_figure, save_heatmaps, write_json
from jlang.parallel import make_mesh
from jlang.sae import lape as lape_lib
from jlang.sae.classify import classify
from jlang.sae.evaluation import evaluate
from jlang.sae.lape import summary_table
from jlang.sae.model import SAE, SAEConfig
from jlang.sae.steer import steering_success
from jlang.sae.stream import ActivationStream, load_tokenized, sentence_rows
from jlang.sae.train import TrainConfig, dead_features, save_history, train_sae


@dataclasses.dataclass(frozen=True)
class CorpusSection:
    source: str = "default"  # "default" or a directory with train/ and heldout/ {lang}.txt files
    languages: tuple[str, ...] = ("en", "zh", "fr", "es", "ru", "ja", "de", "ar", "ko", "id", "vi", "hi")
    add_bos: bool = True


@dataclasses.dataclass(frozen=True)
class SAESection:
    layer: int = 9
    hook_point: Literal["mlp.out", "resid.post"] = "mlp.out"
    kind: Literal["topk", "relu"] = "topk"
    num_features: int = 4096
    k: int = 32


@dataclasses.dataclass(frozen=True)
class DataSection:
    batch_size: int = 8  # model rows per batch
    seq_len: int = 128
    seed: int = 0
    skip_bos: bool = True


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    every: int = 200  # steps
    resume: bool = True  # continue from {out}/checkpoints when a checkpoint is there
    keep: bool = False  # keep the checkpoints after a finished run


@dataclasses.dataclass(frozen=True)
class EvalSection:
    sentences_per_language: int = 40  # held-out sentences
    max_len: int = 64
    batch_size: int = 16
    vocab_chunk: int = 16384


@dataclasses.dataclass(frozen=True)
class LapeSection:
    split: Literal["train", "heldout"] = "train"
    sentences_per_language: int | None = 400
    max_len: int = 64
    batch_size: int = 16
    threshold_ratio: float = 0.5
    example_rate: float = 0.98
    token_rate: float = 0.1
    lang_specific: bool = True
    top: int | None = None
    top_by_frequency: bool = False
    entropy_threshold: float | None = None
    # The report tabulates candidates and features for every pair of these filter rates (same statistics).
    sweep_example_rates: tuple[float, ...] = (0.98, 0.9, 0.8, 0.5, 0.3)
    sweep_token_rates: tuple[float, ...] = (0.1, 0.05)


@dataclasses.dataclass(frozen=True)
class DownstreamSection:
    """The candidate filter of the features that language ID and steering use (null: the `lape` section's rate).

    Language ID also scores the `lape` section's features and, with `shared`, this filter without
    `lang_specific` (features of several languages count for each of them), on the same model pass.
    """

    example_rate: float | None = None
    token_rate: float | None = None
    shared: bool = True


@dataclasses.dataclass(frozen=True)
class ClassifySection:
    enabled: bool = True
    split: Literal["train", "heldout"] = "heldout"
    sentences_per_language: int | None = None
    batch_size: int = 16


@dataclasses.dataclass(frozen=True)
class SteeringSection:
    enabled: bool = True
    split: Literal["train", "heldout"] = "heldout"
    source: str = "en"  # the prompts' language
    prompts: int = 4
    template: str = "Q: {text}\nA:"
    targets: tuple[str, ...] = ("fr", "es", "de", "ru", "ja", "zh")
    multipliers: tuple[float, ...] = (0.25, 0.5, 1.0)
    where: Literal["all", "last"] = "all"
    max_new_tokens: int = 24
    repetition_penalty: float = 1.1
    batch_size: int = 16


@dataclasses.dataclass(frozen=True)
class SAELapeConfig:
    """`experiments/sae_lape.py`: SAE training, SAE-LAPE features, language ID and steering on one model."""

    out: str = "runs/sae_lape"
    reuse_sae: bool = True  # load {out}/sae.npz when it was trained with these settings
    model: config_lib.ModelSection = dataclasses.field(default_factory=config_lib.ModelSection)
    mesh: config_lib.MeshSection = dataclasses.field(default_factory=config_lib.MeshSection)
    corpus: CorpusSection = dataclasses.field(default_factory=CorpusSection)
    sae: SAESection = dataclasses.field(default_factory=SAESection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    lape: LapeSection = dataclasses.field(default_factory=LapeSection)
    downstream: DownstreamSection = dataclasses.field(default_factory=DownstreamSection)
    classify: ClassifySection = dataclasses.field(default_factory=ClassifySection)
    steering: SteeringSection = dataclasses.field(default_factory=SteeringSection)


# ----------------------------------------------------------------------------- steps


def train_or_reuse(cfg: SAELapeConfig, model, log):
    """(SAE, history, dead-feature summary, seconds, how)."""
    out = Path(cfg.out)
    s = cfg.sae
    sae_cfg = SAEConfig(
        d_in=model.config.d_model,
        num_features=s.num_features,
        kind=s.kind,
        k=s.k,
        layer=s.layer,
        hook_point=s.hook_point,
    )
    settings = {
        "sae": sae_cfg.to_dict(),
        "train": dataclasses.asdict(cfg.train),
        "data": dataclasses.asdict(cfg.data),
        "model": model.name,
        "languages": list(cfg.corpus.languages),
    }
    if cfg.reuse_sae and (out / "sae.npz").is_file() and (out / "train.json").is_file():
        saved = json.loads((out / "train.json").read_text())
        if saved.get("settings") == json.loads(json.dumps(settings)):
            log(f"reusing {out / 'sae.npz'}")
            history = json.loads((out / "history.json").read_text())
            return (SAE.load(out / "sae.npz"), history, saved["dead"], saved["seconds"], f"reused {out / 'sae.npz'}")
        log(f"{out / 'sae.npz'} was trained with other settings; training again")

    tok = load_tokenized(
        model, resolve_corpus(cfg.corpus.source, cfg.corpus.languages, "train"), add_bos=cfg.corpus.add_bos
    )
    d = cfg.data
    stream = ActivationStream(
        model,
        tok,
        layer=s.layer,
        point=s.hook_point,
        batch_size=d.batch_size,
        seq_len=d.seq_len,
        seed=d.seed,
        skip_bos=d.skip_bos,
    )
    ckpt = out / "checkpoints"
    res = train_sae(
        stream,
        sae_cfg,
        cfg.train,
        checkpoint_dir=ckpt,
        checkpoint_every=cfg.checkpoint.every,
        resume=cfg.checkpoint.resume,
        log=log,
    )
    res.sae.save(out / "sae.npz")
    save_history(res.history, out / "history.json")
    dead = dead_features(res.since_fired, cfg.train.dead_window)
    how = f"trained ({res.steps} steps" + (f", resumed from step {res.resumed_from}" if res.resumed_from else "") + ")"
    write_json(
        out / "train.json",
        {
            "settings": settings,
            "dead": dead,
            "seconds": res.seconds,
            "tokens": res.tokens,
            "epochs_started": stream.epoch + 1,
            "how": how,
        },
    )
    if not cfg.checkpoint.keep:
        shutil.rmtree(ckpt, ignore_errors=True)
    return res.sae, res.history, dead, res.seconds, how


def _counts(result) -> dict:
    """Candidates, language-specific features in all, and per language, of one identification."""
    return {"candidates": int(result.candidates.sum()), "features": sum(result.counts().values()), **result.counts()}


def plot_training(history, path) -> None:
    steps = [h["step"] for h in history]
    fig = new_figure(11, 3.2)
    third = ("dead", "dead features") if history and "dead" in history[0] else ("aux", "AuxK loss")  # older histories
    for i, (key, label) in enumerate((("ev", "explained variance"), ("mse", "MSE (normalised units)"), third)):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.plot(steps, [h[key] for h in history])
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
        if key == "ev":
            ax.set_ylim(max(0.0, min(h["ev"] for h in history) - 0.05), 1.0)
    save_figure(fig, path)


def plot_features(result, path) -> None:
    """Features per language, and the entropy of every candidate vs its top language's p."""
    counts = result.counts()
    fig = new_figure(11, 3.6)
    ax = fig.add_subplot(1, 2, 1)
    ax.bar(list(counts), list(counts.values()), color="tab:blue")
    pr = result.params
    ax.set_title(
        f"SAE-LAPE features per language (filter {pr['example_rate']:g} / {pr['token_rate']:g}, ratio "
        f"{pr['threshold_ratio']:g}{', language-specific' if pr['lang_specific'] else ''})",
        fontsize=9,
    )
    ax = fig.add_subplot(1, 2, 2)
    cand = result.candidates[0]
    ent = result.entropy[0][cand]
    top = result.probs[:, 0][:, cand].argmax(axis=0)
    import matplotlib

    colors = matplotlib.colormaps["tab20"]
    for k, lang in enumerate(result.languages):
        sel = top == k
        if sel.any():
            ax.scatter(ent[sel], result.probs[k, 0][cand][sel], s=8, label=lang, color=colors(k % 20))
    ax.set_xlabel("entropy over languages (ln)")
    ax.set_ylabel("p of the top language")
    ax.set_title(f"{int(cand.sum())} candidate features", fontsize=10)
    ax.legend(fontsize=6, ncol=2)
    save_figure(fig, path)


def plot_steering(steer, path) -> None:
    targets = list(steer["success"])
    mults = sorted({float(m) for t in targets for m in steer["success"][t]})
    m = np.array([[steer["success"][t][mm] for mm in mults] for t in targets])
    base = np.array([[steer["baseline"][t]] for t in targets])
    save_heatmaps(
        path,
        [
            {
                "matrix": m,
                "rows": targets,
                "cols": [f"m={x:g}" for x in mults],
                "title": "share identified as the target",
                "vmin": 0,
                "vmax": 1,
                "xlabel": "multiplier",
                "ylabel": "target",
            },
            {
                "matrix": base,
                "rows": targets,
                "cols": ["no steering"],
                "title": "baseline (unsteered)",
                "vmin": 0,
                "vmax": 1,
            },
        ],
        ncols=2,
        panel_size=(5.0, 4.0),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)
    cfg: SAELapeConfig = config_lib.load_config(args.config, SAELapeConfig, args.set)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config_lib.to_dict(cfg))), sort_keys=False))
    log = lambda msg: print(f"[sae_lape] {msg}", flush=True)
    timings: dict[str, float] = {}
    languages = list(cfg.corpus.languages)

    t = time.perf_counter()
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.model) if (cfg.mesh.data or cfg.mesh.model) else None
    model = jlang.load_model(cfg.model.source, dtype=cfg.model.dtype, mesh=mesh)
    timings["load model"] = time.perf_counter() - t

    t = time.perf_counter()
    sae, history, dead, train_seconds, how = train_or_reuse(cfg, model, log)
    plot_training(history, out / "train.png")
    timings["SAE training" if how.startswith("trained") else "load SAE"] = time.perf_counter() - t
    log(f"{sae}: {how}; last {history[-1]}; dead {dead}")

    t = time.perf_counter()
    heldout = load_tokenized(
        model, resolve_corpus(cfg.corpus.source, languages, "heldout"), add_bos=cfg.corpus.add_bos, progress=False
    )
    ev = evaluate(
        model,
        sae,
        sentence_rows(heldout, max_len=cfg.eval.max_len, max_per_language=cfg.eval.sentences_per_language),
        batch_size=cfg.eval.batch_size,
        vocab_chunk=cfg.eval.vocab_chunk,
        skip_bos=cfg.data.skip_bos,
    )
    write_json(out / "eval.json", ev)
    timings["evaluation"] = time.perf_counter() - t
    log(f"held-out evaluation: {ev}")

    t = time.perf_counter()
    c = cfg.lape
    tok = load_tokenized(
        model, resolve_corpus(cfg.corpus.source, languages, c.split), add_bos=cfg.corpus.add_bos, progress=False
    )
    stats = lape_lib.feature_stats(
        model,
        sae,
        sentence_rows(tok, max_len=c.max_len, max_per_language=c.sentences_per_language),
        languages,
        batch_size=c.batch_size,
        skip_bos=cfg.data.skip_bos,
        meta={"split": c.split},
    )
    stats.save(out / "stats.npz")
    features = lape_lib.identify(
        stats,
        threshold_ratio=c.threshold_ratio,
        example_rate=c.example_rate,
        token_rate=c.token_rate,
        lang_specific=c.lang_specific,
        top=c.top,
        top_by_frequency=c.top_by_frequency,
        entropy_threshold=c.entropy_threshold,
    )
    features.save(out / "features.npz")
    write_json(out / "features.json", lape_lib.to_jsonable(features))

    shared = lape_lib.identify(
        stats,
        threshold_ratio=c.threshold_ratio,
        example_rate=c.example_rate,
        token_rate=c.token_rate,
        lang_specific=False,
    )
    sweep = [
        {
            "example_rate": er,
            "token_rate": tr,
            **_counts(
                lape_lib.identify(
                    stats,
                    threshold_ratio=c.threshold_ratio,
                    example_rate=er,
                    token_rate=tr,
                    lang_specific=c.lang_specific,
                )
            ),
        }
        for er in c.sweep_example_rates
        for tr in c.sweep_token_rates
    ]
    ds = cfg.downstream
    d_rates = {
        "example_rate": c.example_rate if ds.example_rate is None else ds.example_rate,
        "token_rate": c.token_rate if ds.token_rate is None else ds.token_rate,
    }
    used = lape_lib.identify(
        stats,
        threshold_ratio=c.threshold_ratio,
        lang_specific=c.lang_specific,
        top=c.top,
        top_by_frequency=c.top_by_frequency,
        entropy_threshold=c.entropy_threshold,
        **d_rates,
    )
    used.save(out / "features_downstream.npz")
    plot_features(used, out / "features.png")
    write_json(out / "features_downstream.json", lape_lib.to_jsonable(used))
    write_json(out / "sweep.json", sweep)
    timings["SAE-LAPE"] = time.perf_counter() - t
    log(
        f"{int(features.candidates.sum())} candidates; features per language {features.counts()}; "
        f"downstream ({d_rates}): {used.counts()}"
    )

    result = None
    if cfg.classify.enabled:
        t = time.perf_counter()
        corpus = resolve_corpus(cfg.corpus.source, languages, cfg.classify.split)
        n = cfg.classify.sentences_per_language
        texts = {l: [d for d in read_documents(corpus[l]) if isinstance(d, str)][:n] for l in languages}
        more = {f"{c.example_rate}/{c.token_rate}": features}
        if ds.shared:
            more["shared"] = lape_lib.identify(stats, threshold_ratio=c.threshold_ratio, lang_specific=False, **d_rates)
        result = classify(
            model, sae, used, texts, batch_size=cfg.classify.batch_size, skip_bos=cfg.data.skip_bos, more_features=more
        )
        result.save(out / "classify.json")
        result.plot(out / "classify.png", [n for n in result.metrics if not n.startswith("sae-min-max")])
        timings["language ID"] = time.perf_counter() - t
        log(f"language ID:\n{result.table()}")

    steer = None
    if cfg.steering.enabled:
        t = time.perf_counter()
        s = cfg.steering
        corpus = resolve_corpus(cfg.corpus.source, [s.source], s.split)
        prompts = [s.template.format(text=d) for d in read_documents(corpus[s.source]) if isinstance(d, str)][
            : s.prompts
        ]
        targets = [tl for tl in s.targets if used.counts().get(tl, 0) > 0]
        steer = steering_success(
            model,
            sae,
            used,
            prompts,
            targets,
            s.multipliers,
            max_new_tokens=s.max_new_tokens,
            repetition_penalty=s.repetition_penalty,
            where=s.where,
            batch_size=s.batch_size,
        )
        steer["skipped_targets"] = [tl for tl in s.targets if tl not in targets]
        write_json(out / "steering.json", steer)
        if targets:
            plot_steering(steer, out / "steering.png")
        timings["steering"] = time.perf_counter() - t
        log(f"steering success {steer['success']}")

    report = write_report(
        cfg,
        model,
        sae,
        history,
        dead,
        train_seconds,
        how,
        ev,
        stats,
        features,
        shared,
        result,
        steer,
        timings,
        sweep=sweep,
        used=used,
        d_rates=d_rates,
    )
    (out / "report.md").write_text(report, encoding="utf-8")
    log(f"wrote {out / 'report.md'}")
    return 0


# ----------------------------------------------------------------------------- report


def write_report(
    cfg,
    model,
    sae,
    history,
    dead,
    train_seconds,
    how,
    ev,
    stats,
    features,
    shared,
    result,
    steer,
    timings,
    *,
    sweep,
    used,
    d_rates,
) -> str:
    c, tr = sae.config, cfg.train
    last = history[-1] if history else {}
    dropped = (
        "; features of more than one language dropped (`--lang-specific`)" if features.params["lang_specific"] else ""
    )
    lines = [
        f"# SAE-LAPE on `{model.name}`",
        "",
        (
            f"Model `{model.name}` ({model.family}, {model.num_layers} layers, d_model {model.config.d_model}). "
            f"SAE: {c.kind} (k = {c.k}), {c.d_in} -> {c.num_features} features, reading `{c.hook_point}` of layer "
            f"{c.layer}; {how}."
        ),
        "",
        "## Training",
        "",
        (
            f"{sae.meta.get('steps', last.get('step'))} Adam steps of {tr.sae_batch} tokens (lr {tr.lr:g}, warm-up "
            f"{tr.warmup_steps}, linear decay over the last {1 - tr.decay_from:.0%}), AuxK {tr.auxk_coeff:g}; "
            f"activations streamed from the model over the train split ({cfg.data.batch_size} x "
            f"{cfg.data.seq_len}-token packed windows per model batch, each token used {tr.reuse}x, BOS left out), "
            f"{sae.meta.get('tokens', 0):,} fresh tokens, "
            f"{train_seconds:.0f} s. Inputs were divided by {sae.meta.get('scale', float('nan')):.3g} during training "
            "(E||x||² = d_model); the saved SAE has it folded back in."
        ),
        "",
        (
            f"Final training window: explained variance **{last.get('ev', float('nan')):.3f}**, MSE (normalised) "
            f"{last.get('mse', float('nan')):.1f}, L0 {last.get('l0', float('nan')):.1f}. Dead features (no activation "
            f"in the last {dead['window_tokens']:,} training tokens): **{dead['dead']} / {dead['features']}** "
            f"({dead['share']:.1%})."
        ),
        "",
        "![training curves](train.png)",
        "",
        "## Held-out evaluation",
        "",
        (
            f"{ev['tokens']:,} tokens of held-out sentences ({cfg.eval.sentences_per_language} per language, BOS left "
            f"out for the SAE metrics; {ev['scored']:,} next-token predictions scored)."
        ),
        "",
        "| metric | value |",
        "|---|---:|",
        f"| MSE per token (model units, summed over d_model) | {ev['mse']:.4g} |",
        f"| explained variance | {ev['ev']:.4f} |",
        f"| L0 (active features per token) | {ev['l0']:.1f} |",
        f"| NLL clean | {ev['nll_clean']:.4f} |",
        f"| NLL with the SAE's reconstruction spliced in | {ev['nll_sae']:.4f} |",
        f"| **ΔNLL (SAE − clean)** | **{ev['delta_nll']:+.4f}** |",
        f"| ΔNLL with `{c.hook_point}` of layer {c.layer} zeroed | {ev['delta_nll_zero']:+.4f} |",
        f"| loss recovered (1 − ΔNLL_SAE / ΔNLL_zero) | {ev['loss_recovered']:.3f} |",
        "",
        "## SAE-LAPE features",
        "",
        (
            f"Statistics on the {cfg.lape.split} split: {int(stats.num_examples.sum()):,} sentences "
            f"(≤ {cfg.lape.sentences_per_language} per language), {int(stats.num_tokens.sum()):,} tokens. Candidate "
            f"filter (some language fires in ≥ int({features.params['example_rate']}·examples) and some on > "
            f"int({features.params['token_rate']}·tokens)): **{int(features.candidates.sum())}** of {c.num_features} "
            f"features. Assignment: p_k ≥ {features.params['threshold_ratio']} · max p{dropped}. "
            f"Without `--lang-specific`: {sum(shared.counts().values())} (language, feature) pairs; with it: "
            f"**{sum(features.counts().values())}** language-specific features."
        ),
        "",
        summary_table(features),
        "",
        "The same statistics under other candidate filters (the first row is the original's):",
        "",
        "| example rate | token rate | candidates | features | " + " | ".join(features.languages) + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(features.languages),
        *[
            f"| {r['example_rate']} | {r['token_rate']} | {r['candidates']} | {r['features']} | "
            + " | ".join(str(r[lang]) for lang in features.languages)
            + " |"
            for r in sweep
        ],
        "",
        (
            f"Language ID and steering below use the features of the filter **{d_rates['example_rate']} / "
            f"{d_rates['token_rate']}** ({int(used.candidates.sum())} candidates, {sum(used.counts().values())} "
            "language-specific features): the default corpus's examples are short UI messages "
            f"({stats.num_tokens.sum() / max(stats.num_examples.sum(), 1):.1f} tokens on average, vs sentences of "
            f"XNLI / PAWS-X / FLORES in the original), and under the original filter only "
            f"{int(features.candidates.sum())} of {c.num_features} features of this small SAE qualify."
        ),
        "",
        summary_table(used),
        "",
        "![features](features.png)",
        "",
    ]
    if result is not None:
        n = cfg.classify.sentences_per_language
        examples = ", ".join(f"{k} {v}" for k, v in result.meta["examples"].items())
        lines += [
            "## Language identification (held-out split)",
            "",
            (
                f"{next(iter(result.metrics.values()))['n']:,} held-out sentences ("
                f"{'all of them' if n is None else f'at most {n} per language'}: {examples}). sae-count: argmax over "
                "languages of the "
                "number of (token, feature) activations among the language's features; sae-min-max: the sum of min-max "
                f"scaled activations, with the {d_rates['example_rate']} / {d_rates['token_rate']} features; rows "
                f"`({features.params['example_rate']}/{features.params['token_rate']})` use the original filter's "
                "features, rows `(shared)` the same filter without `--lang-specific`; py3langid is restricted to the "
                "same languages. "
                f"{result.silent} sentences fired no language-specific feature (they count as the first language, "
                f"`{features.languages[0]}`, as torch.argmax does in the original)."
            ),
            "",
            result.table(),
            "",
            "F1 per language:",
            "",
            result.per_language_f1(),
            "",
            "![confusion matrices](classify.png)",
            "",
        ]
    if steer is not None:
        s = cfg.steering
        lines += [
            "## Steering",
            "",
            (
                f"{s.prompts} `{s.source}` held-out prompts as `{s.template!r}`, greedy, {s.max_new_tokens} new "
                f"tokens, repetition penalty {s.repetition_penalty}; `h += m · maxact_f · W_dec[f]` over the target's "
                f"features at `{c.hook_point}` of layer {c.layer}, at "
                f"{'every token' if s.where == 'all' else 'the last prompt token'}. "
                f"Success = py3langid says the continuation is in the target language."
            ),
            "",
        ]
        if steer["success"]:
            mults = sorted({float(m) for t in steer["success"] for m in steer["success"][t]})
            lines += [
                "| target | no steering | " + " | ".join(f"m = {m:g}" for m in mults) + " |",
                "|---|---:|" + "---:|" * len(mults),
            ]
            for tl, row in steer["success"].items():
                lines.append(
                    f"| {tl} | {steer['baseline'][tl]:.2f} | " + " | ".join(f"{row[m]:.2f}" for m in mults) + " |"
                )
            example = next((r for r in steer["rows"] if r["target"] and r["language"] == r["target"]), None)
            lines += ["", "![steering](steering.png)", ""]
            if example is None:
                lines += [
                    (
                        "No steered continuation was identified as its target language. The vector is added at one "
                        "layer only (the original adds it at layers 0-15 at once)"
                        + (
                            ", and in this model Gemma's RMSNorm after the MLP rescales `mlp.out` before it joins the "
                            "residual stream, so one layer's MLP contribution stays bounded whatever m is: large m "
                            "degrades the text (see `steering.json`) instead of changing its language."
                            if model.config.sandwich_norms
                            else "."
                        )
                    ),
                    "",
                ]
            if example:
                plain = next(r for r in steer["rows"] if r["target"] is None and r["prompt"] == example["prompt"])
                lines += [
                    f"Example (target `{example['target']}`, m = {example['multiplier']:g}):",
                    "",
                    f"- prompt: `{example['prompt']!r}`",
                    f"- unsteered: `{plain['text']!r}`",
                    f"- steered: `{example['text']!r}`",
                    "",
                ]
        if steer.get("skipped_targets"):
            lines += [
                f"Targets without language-specific features (skipped): {', '.join(steer['skipped_targets'])}.",
                "",
            ]
    lines += ["## Wall time", "", ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
