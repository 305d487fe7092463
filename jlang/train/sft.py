"""Alignment fine-tuning: supervised training on (prompt, response) pairs, all weights or only chosen neurons.

`finetune(cfg)` trains a model on multilingual translation or instruction pairs
(`jlang.train.data`) with an optax optimizer, the loss being the mean negative
log-likelihood of the **response tokens** of the global batch. Two modes:

* `trainable: all` — every parameter except those listed in `freeze` (e.g.
  `[embed]`: the 262k x 640 embedding is 62% of the default model, and Adam keeps
  two float32 moments per trained weight);
* `trainable: neurons` — PLND's "neuron enhancement" (Zhao et al. 2024,
  DAMO-NLP-SG/multilingual_analysis `neuron_enhancement`, methods.md §2.2): only
  the weights of the language-specific neurons of `mask_languages` (a
  `NeuronMasks` file, e.g. LAPE's) change. Neuron `(l, j)` owns column `j` of
  `W_gate` and `W_up` and row `j` of `W_down` of layer `l` (jlang's `[in, out]`
  kernels: `gate[l][:, j]`, `up[l][:, j]`, `down[l][j, :]`; HF's `gate_proj.weight`
  row `j`, `down_proj.weight` column `j`). The original zeroes `param.grad[~mask]`
  in a patched `trainer.py`; here the gradients are masked before the optimizer
  (so clipping and Adam's moments see only those entries) and the update is
  applied only where the mask holds (so weight decay cannot move a frozen
  weight either): every other weight stays bit-for-bit what it was.

The loss never builds `[batch, seq, vocab]` logits when `train.vocab_chunk` is
set: the log-softmax is folded over vocabulary chunks in a scan whose body is
rematerialised (`jax.checkpoint`), so the backward pass recomputes each chunk
instead of keeping all of them.

Checkpoints (orbax `CheckpointManager`, in `{out}/train-checkpoint` unless
`train.checkpoint_dir` says otherwise) hold the trained parameters, the
optimizer state, the grain iterator state of every process and a JSON record
(the run's fingerprint, the step, the loss history). They are written every
`train.checkpoint_every` steps and when SIGTERM/SIGINT arrives (the run then
stops with `RunInterrupted`, exit code 128 + signal). `resume=True` restores all
of it and continues: the final parameters equal an uninterrupted run's bit for
bit. Frozen parameters are not checkpointed; they are reloaded from the model
source, whose identity is part of the fingerprint.

Outputs under `out`: `checkpoint/` (a jlang checkpoint: `jlang.load_model`),
`hf/` (with `export_hf: true`), `loss.json` + `loss.png`, `config.yaml`,
`summary.md`. Multi-process runs (`jlang.parallel.distributed`) shard the batch rows by
process and write every output once, from process 0.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import resource
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jlang import config as config_lib
from jlang.config import ConfigError, MeshSection, ModelSection
from jlang.io.checkpoint import OrbaxRun
from jlang.parallel import distributed
from jlang.train.data import DEFAULT_TEMPLATE

__all__ = [
    "DataSection",
    "FinetuneConfig",
    "TrainSection",
    "finetune",
    "load_finetune_config",
    "neuron_update_masks",
    "validate_config",
]

FORMAT = "jlang.finetune-checkpoint/1"
NEURON_PARAMS = ("layers.gate", "layers.up", "layers.down")


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class DataSection:
    # "default" (the packaged corpus's parallel split), a corpus directory with parallel/{split}.jsonl,
    # or a .jsonl file of parallel rows ({"text": {lang: sentence}}) or pairs ({"lang", "prompt", "response"})
    source: str = "default"
    split: str = "heldout"  # the parallel file of a corpus directory: parallel/{split}.jsonl
    languages: tuple[str, ...] = ("fr", "es", "de", "zh")  # target languages
    source_language: str = "en"  # translation pairs: the language of {source}
    pairs_per_language: int | None = None  # training pairs per language (None: all)
    eval_pairs_per_language: int = 0  # pairs per language kept out of training to measure loss before/after
    template: str = DEFAULT_TEMPLATE  # {language} {source_language} {lang} {source_lang} {source}
    seq_len: int = 96
    add_bos: bool = True
    add_eos: bool = True  # the response ends with EOS (in the loss: the model learns to stop)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    steps: int = 30
    batch_size: int = 8  # rows per step over all processes
    learning_rate: float = 1e-5
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = 0.0  # adamw only
    warmup: int = 0  # steps of linear warm-up from 0
    schedule: Literal["constant", "cosine", "linear"] = "constant"  # after warm-up
    grad_clip: float | None = 1.0  # global-norm clipping (null: none)
    seed: int = 0  # data order
    checkpoint_every: int = 10  # steps (0: only on SIGTERM/SIGINT)
    checkpoint_dir: str | None = None  # default {out}/train-checkpoint
    vocab_chunk: int | None = 32768  # loss over vocabulary chunks (null: full logits)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """`jlang finetune CONFIG`: supervised alignment fine-tuning (module doc)."""

    out: str = "runs/align_default"
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    trainable: Literal["all", "neurons"] = "all"
    freeze: tuple[str, ...] = ()  # "all": jlang parameter names kept fixed, e.g. [embed]
    masks: str | None = None  # "neurons": a NeuronMasks .npz
    mask_languages: tuple[str, ...] = ()  # "neurons": whose neurons to train (their union)
    export_hf: bool = False  # also write {out}/hf, a Hugging Face directory


def validate_config(cfg: FinetuneConfig) -> None:
    """Raise `ConfigError` for every value that cannot work, before any model is loaded."""
    from jlang.models.decoder import LOGICAL_AXES

    t, d = cfg.train, cfg.data
    problems = []
    if cfg.trainable not in ("all", "neurons"):
        problems.append(f"trainable {cfg.trainable!r} is not one of ['all', 'neurons']")
    if t.steps < 1:
        problems.append(f"train.steps must be >= 1, got {t.steps}")
    if t.batch_size < 1:
        problems.append(f"train.batch_size must be >= 1, got {t.batch_size}")
    if not (t.learning_rate > 0 and math.isfinite(t.learning_rate)):
        problems.append(f"train.learning_rate must be a positive number, got {t.learning_rate}")
    if t.optimizer not in ("adamw", "adam", "sgd"):
        problems.append(f"train.optimizer {t.optimizer!r} is not one of ['adamw', 'adam', 'sgd']")
    if t.schedule not in ("constant", "cosine", "linear"):
        problems.append(f"train.schedule {t.schedule!r} is not one of ['constant', 'cosine', 'linear']")
    if not 0 <= t.warmup <= t.steps:
        problems.append(f"train.warmup must be in [0, train.steps={t.steps}], got {t.warmup}")
    if t.weight_decay < 0:
        problems.append(f"train.weight_decay must be >= 0, got {t.weight_decay}")
    if t.grad_clip is not None and not t.grad_clip > 0:
        problems.append(f"train.grad_clip must be positive or null, got {t.grad_clip}")
    if t.checkpoint_every < 0:
        problems.append(f"train.checkpoint_every must be >= 0, got {t.checkpoint_every}")
    if t.vocab_chunk is not None and t.vocab_chunk < 1:
        problems.append(f"train.vocab_chunk must be positive or null, got {t.vocab_chunk}")
    if d.seq_len < 2:
        problems.append(f"data.seq_len must be >= 2, got {d.seq_len}")
    if not d.languages:
        problems.append("data.languages is empty; name the languages to train on")
    if len(set(d.languages)) != len(d.languages):
        problems.append(f"data.languages {list(d.languages)} repeat a language")
    if d.pairs_per_language is not None and d.pairs_per_language < 1:
        problems.append(f"data.pairs_per_language must be >= 1 or null, got {d.pairs_per_language}")
    if d.eval_pairs_per_language < 0:
        problems.append(f"data.eval_pairs_per_language must be >= 0, got {d.eval_pairs_per_language}")
    try:
        d.template.format(language="L", source_language="S", lang="l", source_lang="s", source="x")
    except (KeyError, IndexError, ValueError) as e:
        problems.append(
            f"data.template {d.template!r} cannot be filled ({type(e).__name__}: {e}); it may use {{language}}, "
            "{source_language}, {lang}, {source_lang} and {source}"
        )
    unknown = sorted(set(cfg.freeze) - set(LOGICAL_AXES))
    if unknown:
        problems.append(f"freeze names unknown parameters {unknown}; jlang's are {sorted(LOGICAL_AXES)}")
    if cfg.trainable == "neurons":
        if not cfg.masks:
            problems.append("trainable: neurons needs masks (a NeuronMasks .npz, e.g. runs/lape_default/masks.npz)")
        elif not Path(cfg.masks).is_file():
            problems.append(f"masks {cfg.masks}: no such file")
        if not cfg.mask_languages:
            problems.append("trainable: neurons needs mask_languages (whose neurons to train)")
        if cfg.freeze:
            problems.append("freeze is for trainable: all (trainable: neurons already freezes everything else)")
    elif cfg.trainable == "all" and (cfg.masks or cfg.mask_languages):
        problems.append("masks and mask_languages are only used with trainable: neurons")
    if problems:
        raise ConfigError("bad fine-tuning config: " + "; ".join(problems))


def load_finetune_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """Load a `FinetuneConfig` from YAML with `key.sub=value` overrides, and validate it."""
    cfg = config_lib.load_config(path, FinetuneConfig, list(overrides))
    validate_config(cfg)
    return cfg


# ----------------------------------------------------------------------------- data


def load_pairs(d: DataSection, seed: int):
    """(train, eval) pairs per language for `d` (`jlang.train.data`)."""
    from jlang.data.sources import CorpusError
    from jlang.train import data as data_lib

    if d.source == "default":
        from jlang.data.corpora.gettext import ensure_default_corpus

        path = ensure_default_corpus() / "parallel" / f"{d.split}.jsonl"
    else:
        path = Path(d.source)
        if path.is_dir():
            path = path / "parallel" / f"{d.split}.jsonl"
    if not path.is_file():
        raise CorpusError(
            f"{path}: no such file; data.source is 'default', a corpus directory with parallel/{{split}}.jsonl, or a "
            ".jsonl file (the packaged corpus's only parallel split is 'heldout')"
        )
    rows = data_lib.read_jsonl(path)
    common = {
        "pairs_per_language": d.pairs_per_language,
        "eval_pairs_per_language": d.eval_pairs_per_language,
        "seed": seed,
        "where": str(path),
    }
    if all(isinstance(r.get("text"), dict) for r in rows):
        texts = [r["text"] for r in rows]
        return data_lib.translation_pairs(
            texts, d.languages, source_language=d.source_language, template=d.template, **common
        )
    if all("prompt" in r and "response" in r for r in rows):
        return data_lib.instruction_pairs(rows, d.languages, **common)
    raise CorpusError(
        f'{path}: rows must all be parallel rows {{"text": {{lang: sentence}}}} or all pairs '
        '{"lang", "prompt", "response"}'
    )


# ----------------------------------------------------------------------------- what trains


def trainable_names(cfg: FinetuneConfig, param_names: list[str]) -> list[str]:
    """The jlang parameters the optimizer updates."""
    if cfg.trainable == "neurons":
        return list(NEURON_PARAMS)
    absent = sorted(set(cfg.freeze) - set(param_names))
    if absent:
        raise ConfigError(f"freeze names {absent}, which this model does not have; it has {param_names}")
    names = [n for n in param_names if n not in cfg.freeze]
    if not names:
        raise ConfigError("freeze lists every parameter: nothing would train")
    return names


def neuron_update_masks(
    masks, languages, num_layers: int, num_neurons: int, *, model: str | None = None, family: str | None = None
) -> dict[str, np.ndarray]:
    """Where `trainable: neurons` may change weights: the union of `languages`' neurons, per kernel.

    Returns bool arrays broadcastable to the kernels: `layers.gate` and `layers.up` `[L, 1, F]`
    (column j of `[d_model, F]`), `layers.down` `[L, F, 1]` (row j of `[F, d_model]`).
    Raises `MaskError` subclasses for a mask of another model or a language it lacks.
    """
    from jlang.masks import MaskError

    masks.check_fits(num_layers, num_neurons, model=model)
    made_for = masks.meta.get("family")
    if family is not None and made_for is not None and made_for != family:
        raise MaskError(f"the masks were made for a {made_for} model, not this {family} model ({model})")
    union = np.zeros((num_layers, num_neurons), bool)
    for lang in languages:
        union |= masks[lang]  # UnknownLanguageError names the mask's languages
    if not union.any():
        raise MaskError(f"the masks hold no neuron for {list(languages)}: nothing would train")
    return {
        "layers.gate": union[:, None, :],
        "layers.up": union[:, None, :],
        "layers.down": union[:, :, None],
    }


def make_optimizer(t: TrainSection):
    """(optax transformation, schedule) of `t`: optional global-norm clipping, then the optimizer.

    The learning rate of step k (1-based) is `peak * k / warmup` during the warm-up (no step is
    wasted at 0), then follows `schedule` from the peak over the remaining steps (a decay ends
    one step short of 0, so the last step still learns).
    """
    import jax.numpy as jnp
    import optax

    peak, warmup = t.learning_rate, t.warmup
    decay_steps = max(t.steps - warmup, 1)
    after = {
        "constant": optax.constant_schedule(peak),
        "cosine": optax.cosine_decay_schedule(peak, decay_steps),
        "linear": optax.linear_schedule(peak, 0.0, decay_steps),
    }[t.schedule]

    def schedule(count):  # optax counts updates from 0
        return jnp.where(count < warmup, peak * (count + 1) / max(warmup, 1), after(jnp.maximum(count - warmup, 0)))

    if t.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=t.weight_decay)
    elif t.optimizer == "adam":
        opt = optax.adam(schedule)
    else:
        opt = optax.sgd(schedule)
    parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip is not None else []
    return optax.chain(*parts, opt), schedule


# ----------------------------------------------------------------------------- the loss and the step


def token_logprob(params: Mapping[str, Any], x, targets, cfg, vocab_chunk: int | None):
    """`log softmax(unembed(x))[targets]` float32 `[b, t]` for final-normed `x [b, t, D]`, differentiable.

    With `vocab_chunk`, the log-sum-exp is folded over vocabulary chunks in a scan whose body is
    rematerialised, so neither pass keeps `[b, t, vocab]` logits (the backward recomputes each chunk).
    """
    import jax
    import jax.numpy as jnp

    from jlang.models.decoder import unembed
    from jlang.models.vocab import chunk_plan, unembed_slice

    vocab = cfg.vocab_size
    if vocab_chunk is None or vocab_chunk >= vocab:
        logits = unembed(params, x, cfg)
        return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]
    size, n = chunk_plan(vocab, vocab_chunk)

    @jax.checkpoint
    def body(carry, i):
        m, s, hit = carry
        first_new = i * size
        start = jnp.minimum(first_new, vocab - size)  # the last chunk ends at the vocabulary's end
        ids = start + jnp.arange(size, dtype=jnp.int32)
        fresh = ids >= first_new  # ids the previous chunk already covered are skipped
        logits = unembed_slice(params, x, cfg, start, size)
        z = jnp.where(fresh, logits, -jnp.inf)
        # the log-sum-exp does not depend on the running max: no gradient through it
        m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(z, axis=-1)))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[..., None]), axis=-1)
        hit = hit + jnp.sum(jnp.where((ids == targets[..., None]) & fresh, logits, 0.0), axis=-1)
        return (m_new, s, hit), None

    shape = targets.shape
    init = (
        jnp.full(shape, -jnp.inf, jnp.float32),
        jnp.zeros(shape, jnp.float32),
        jnp.zeros(shape, jnp.float32),
    )
    (m, s, hit), _ = jax.lax.scan(body, init, jnp.arange(n, dtype=jnp.int32))
    return hit - (m + jnp.log(s))


def response_nll(params: Mapping[str, Any], batch: Mapping[str, Any], cfg, vocab_chunk: int | None):
    """(summed NLL of the loss tokens, their count) of one batch (`jlang.train.data` fields)."""
    import jax.numpy as jnp

    from jlang.models.decoder import forward

    ids, attend, loss = batch["ids"], batch["attend"], batch["loss"]
    x, _ = forward(params, ids, cfg, valid=attend, output="hidden")
    logp = token_logprob(params, x[:, :-1], ids[:, 1:], cfg, vocab_chunk)  # position t predicts token t + 1
    weight = (loss[:, 1:] & attend[:, :-1]).astype(jnp.float32)
    return -jnp.sum(logp * weight), jnp.sum(weight)


def train_step(trainable, opt_state, frozen, batch, update_masks, *, cfg, optimizer, vocab_chunk):
    """One optimizer step on the mean response NLL of the global batch -> (params, opt_state, metrics)."""
    import jax
    import jax.numpy as jnp
    import optax

    def loss_fn(p):
        nll, count = response_nll({**frozen, **p}, batch, cfg, vocab_chunk)
        return nll / jnp.maximum(count, 1.0), count

    (loss, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    grads = {k: jnp.where(update_masks[k], g, 0) if k in update_masks else g for k, g in grads.items()}
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    new = {}
    for k, p in trainable.items():
        stepped = (p + updates[k]).astype(p.dtype)
        new[k] = jnp.where(update_masks[k], stepped, p) if k in update_masks else stepped
    metrics = {"loss": loss, "tokens": count, "grad_norm": optax.global_norm(grads)}
    return new, opt_state, metrics


# ----------------------------------------------------------------------------- checkpoints


class _Checkpoints(OrbaxRun):
    """The orbax checkpoints of one fine-tuning run: params, optimizer state, this process's iterator, the record."""

    def save(self, step: int, params, opt_state, iterator, record: Mapping) -> None:
        import grain
        import orbax.checkpoint as ocp

        self.save_items(
            step,
            record,
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            iterator=grain.checkpoint.CheckpointSave(iterator),
        )

    def restore(self, step: int, params, opt_state, iterator):
        """(params, opt_state) of checkpoint `step`, shaped and sharded like the abstract templates
        (`jax.ShapeDtypeStruct` trees, see `abstract`); `iterator` is set in place."""
        import grain
        import orbax.checkpoint as ocp

        got = self.restore_items(
            step,
            params=ocp.args.StandardRestore(params),
            opt_state=ocp.args.StandardRestore(opt_state),
            iterator=grain.checkpoint.CheckpointRestore(iterator),
        )
        return got["params"], got["opt_state"]


def run_fingerprint(cfg: FinetuneConfig, model, rows_digest: str, masks_digest: str | None, shards: int) -> dict:
    """What makes two fine-tuning runs the same run (a checkpoint of another run is refused)."""
    import jax

    # Paths and outputs may change between launches; everything that shapes the training may not.
    informative = {"out", "export_hf", "masks", "model.source", "train.checkpoint_every", "train.checkpoint_dir"}
    flat = _flatten(json.loads(json.dumps(config_lib.to_dict(cfg))))
    settings = {f"config.{k}": v for k, v in flat.items() if k not in informative}
    return {
        "format": FORMAT,
        **settings,
        "model": model.name,
        "family": model.family,
        "dtype": model.dtype,
        "layers": int(model.num_layers),
        "neurons": int(model.num_neurons),
        "data_digest": rows_digest,
        "masks_digest": masks_digest,
        "data_shards": int(shards),
        "processes": int(jax.process_count()),  # one grain iterator state per process in a checkpoint
    }


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    """`{"train": {"steps": 3}}` -> `{"train.steps": 3}` (so a refused resume names the exact key)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_fingerprint(saved: Mapping, current: Mapping, where: str) -> None:
    from jlang.io.checkpoint import ResumeError

    if saved.get("format") != FORMAT:
        raise ResumeError(
            f"{where} does not hold a jlang fine-tuning checkpoint (format {saved.get('format')!r}); "
            "delete it or set train.checkpoint_dir elsewhere"
        )
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}"
        for k in sorted(current)
        if k != "format" and saved.get(k) != current.get(k)
    ]
    if diffs:
        raise ResumeError(
            f"{where} holds a checkpoint of a different run ({'; '.join(diffs)}); resume with the same "
            f"config, or delete {where} to start a new run"
        )


# ----------------------------------------------------------------------------- outputs


def plot_loss(history: list[dict], path: Path, *, title: str, evals: Mapping[str, float] | None = None) -> Path:
    """Training loss per step with its running mean; the held-out loss before (step 0) and after (last step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jlang.io.atomic import atomic_file

    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(steps, loss, ".-", lw=0.8, ms=3, alpha=0.6, label="training loss (one batch)")
    if len(loss) >= 5:
        w = max(len(loss) // 10, 3)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, lw=2, label=f"running mean ({w} steps)")
    if evals:
        ax.plot(
            [0, steps[-1]],
            [evals["before"], evals["after"]],
            "s--",
            color="C3",
            lw=1,
            label=f"held-out loss: {evals['before']:.3f} -> {evals['after']:.3f}",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("response NLL (nats / token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _write_json(path: Path, obj: Any) -> None:
    from jlang.io.atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _mean(history: list[dict], which: slice) -> float:
    values = [h["loss"] for h in history[which]]
    return float(np.mean(values)) if values else float("nan")


def summary_markdown(result: Mapping[str, Any]) -> str:
    h = result["history"]
    k = min(5, len(h))
    lines = [
        f"# Fine-tuning {result['model']} ({result['trainable']})",
        "",
        (
            f"{result['steps']} steps x {result['batch_size']} rows of {result['seq_len']} tokens, "
            f"{result['trainable_params']:,} trained parameters ({result['trainable_names']}); languages "
            f"{', '.join(result['languages'])}; {result['train_rows']} training rows, "
            f"{sum(result['loss_tokens'].values()):,} response tokens."
        ),
        "",
        "| | loss (response NLL, nats/token) |",
        "|---|---:|",
        f"| first step | {h[0]['loss']:.4f} |",
        f"| mean of the first {k} steps | {_mean(h, slice(0, k)):.4f} |",
        f"| mean of the last {k} steps | {_mean(h, slice(-k, None)):.4f} |",
        f"| last step | {h[-1]['loss']:.4f} |",
    ]
    ev = result.get("eval") or {}
    if ev:
        lines.append(f"| held-out pairs, before | {ev['before']:.4f} |")
        lines.append(f"| held-out pairs, after | {ev['after']:.4f} |")
    lines += [
        "",
        "Wall time: "
        + ", ".join(f"{name} {s:.1f} s" for name, s in result["timings"].items())
        + f"; peak memory (max RSS of process 0) {result['peak_rss_gb']:.2f} GB.",
        "",
        "![loss curve](loss.png)",
    ]
    return "\n".join(lines) + "\n"


def peak_rss_gb() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 30) if sys.platform == "darwin" else peak / (1 << 20)


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class _Run:
    """What a run has built before its first step (`_prepare`, `_training_state`)."""

    cfg: FinetuneConfig
    model: Any  # jlang.Model, placing batch rows as this process's share
    mesh: Any
    shard: int
    shards: int
    rows: Any  # PairRows
    eval_rows: Any  # PairRows | None
    names: list[str]  # trained parameters
    update_masks: dict[str, np.ndarray]  # "neurons": where updates land
    fingerprint: dict = dataclasses.field(default_factory=dict)


def _check_outputs(cfg: FinetuneConfig, store: _Checkpoints, resume: bool) -> int | None:
    """The newest checkpoint's step; refuse a half-done run without `resume`, and a finished one."""
    from jlang.io.checkpoint import ResumeError

    latest = store.latest_step()
    if latest is not None and not resume:
        raise ResumeError(
            f"{store.directory} holds a checkpoint of an interrupted run ({latest} steps done); pass --resume "
            f"(resume=True) to continue it, or delete {store.directory} to start over"
        )
    final = Path(cfg.out) / "checkpoint"
    if final.exists() and latest is None:
        raise FileExistsError(f"{final} exists: this run has finished; choose another out, or delete {cfg.out}")
    return latest


def _prepare(cfg: FinetuneConfig, *, show: bool) -> _Run:
    """Read masks and pairs (failing on bad input before the model loads), load the model, tokenize."""
    import jlang
    from jlang.masks import NeuronMasks
    from jlang.train import data as data_lib

    masks = NeuronMasks.load(cfg.masks) if cfg.trainable == "neurons" else None
    for lang in cfg.mask_languages if masks is not None else ():
        masks.index(lang)  # UnknownLanguageError names the mask's languages
    train_pairs, eval_pairs = load_pairs(cfg.data, cfg.train.seed)

    mesh = distributed.default_mesh(cfg.mesh.data, cfg.mesh.model)
    shard, shards = distributed.data_shard(mesh)
    data_axis = mesh.shape["data"] if mesh is not None else 1
    if cfg.train.batch_size % data_axis or cfg.train.batch_size % shards:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size} must be a multiple of the mesh's data axis ({data_axis}) "
            f"and of the {shards} data shard(s)"
        )
    model = distributed.for_processes(
        jlang.load_model(cfg.model.source, dtype=cfg.model.dtype, mesh=mesh, progress=show)
    )
    mcfg = model.config
    tokenize = functools.partial(
        data_lib.pair_rows,
        tokenizer=model.tokenizer,
        seq_len=cfg.data.seq_len,
        add_bos=cfg.data.add_bos,
        add_eos=cfg.data.add_eos,
        vocab_size=mcfg.vocab_size,
    )
    rows = tokenize(train_pairs)
    eval_rows = tokenize(eval_pairs) if cfg.data.eval_pairs_per_language else None
    update_masks = {}
    if masks is not None:
        update_masks = neuron_update_masks(
            masks, cfg.mask_languages, mcfg.num_layers, mcfg.d_ff, model=model.name, family=model.family
        )
    run = _Run(cfg, model, mesh, shard, shards, rows, eval_rows, trainable_names(cfg, mcfg.param_names()), update_masks)
    masks_digest = _digest(update_masks["layers.down"]) if update_masks else None
    run.fingerprint = run_fingerprint(cfg, model, rows.digest(), masks_digest, shards)
    return run


def _training_state(run: _Run):
    """(trainable, frozen, opt_state, placed update masks, jitted step, schedule), placed on the mesh."""
    import jax
    import jax.numpy as jnp

    from jlang import parallel

    params = run.model.params
    trainable = {k: params[k] for k in run.names}
    frozen = {k: v for k, v in params.items() if k not in trainable}
    mesh = run.mesh
    masks = {k: _replicate(jnp.asarray(v), mesh) for k, v in run.update_masks.items()}
    optimizer, schedule = make_optimizer(run.cfg.train)
    if mesh is not None:
        opt_state = optimizer.init(trainable)  # moments take their parameter's sharding
        # scalars (step counts) replicated on the mesh, like every non-parameter
        opt_state = jax.tree.map(lambda x: x if _on_mesh(x, mesh) else _replicate(x, mesh), opt_state)
    else:  # jit: committed to the parameters' device, as restored checkpoints are (one compiled step for both)
        opt_state = jax.jit(optimizer.init)(trainable)
        masks = jax.device_put(masks, next(iter(trainable.values())).sharding)
    shardings = None
    if mesh is not None:  # the step keeps every array where it was: no resharding between steps
        shardings = (
            jax.tree.map(lambda x: x.sharding, trainable),
            jax.tree.map(lambda x: x.sharding, opt_state),
            parallel.replicated(mesh),
        )
    step = jax.jit(
        functools.partial(train_step, cfg=run.model.config, optimizer=optimizer, vocab_chunk=run.cfg.train.vocab_chunk),
        donate_argnums=(0, 1),  # parameters and moments are updated in place
        out_shardings=shardings,
    )
    return trainable, frozen, opt_state, masks, step, schedule


def _evaluator(run: _Run, frozen: Mapping[str, Any]):
    """`evaluate(trainable) -> mean response NLL` over the held-out pairs, or None without them."""
    import jax

    from jlang import parallel
    from jlang.train import data as data_lib

    if run.eval_rows is None:
        return None
    nll_fn = jax.jit(
        functools.partial(response_nll, cfg=run.model.config, vocab_chunk=run.cfg.train.vocab_chunk),
        out_shardings=parallel.replicated(run.mesh) if run.mesh is not None else None,  # each process reads its copy
    )
    batches = data_lib.eval_batches(
        run.eval_rows, batch_size=run.cfg.train.batch_size, shard=run.shard, shards=run.shards
    )

    def evaluate(trainable) -> float:
        nll = count = 0.0
        params = {**frozen, **trainable}
        for b in batches:
            s, c = nll_fn(params, {k: run.model.place_batch(b[k]) for k in ("ids", "attend", "loss")})
            nll, count = nll + _host_scalar(s), count + _host_scalar(c)
        return nll / max(count, 1.0)

    return evaluate


def _train_loop(
    run: _Run, state, store: _Checkpoints, iterator, start: int, history: list, record_extra: dict, *, show: bool
):
    """Steps `start + 1 .. steps`: checkpoints every `checkpoint_every` steps, at the end, and on a signal.

    Returns the trained parameters (the optimizer state is dropped: its memory is free for the outputs);
    raises `RunInterrupted` after saving on a signal.
    """
    from tqdm.auto import tqdm

    from jlang.io.checkpoint import RunInterrupted, stop_requested

    trainable, frozen, opt_state, masks, step_fn, schedule = state
    total, every = run.cfg.train.steps, run.cfg.train.checkpoint_every
    with stop_requested() as flag:
        if show:  # printed once the signal handler is in place: a SIGTERM from now on checkpoints first
            n = _count_trained(trainable, run.update_masks)
            print(
                f"fine-tuning {run.model.name} ({run.cfg.trainable}): {n:,} trained parameters, steps "
                f"{start}..{total}, {len(run.rows)} rows of {run.rows.seq_len} tokens",
                flush=True,
            )
        bar = tqdm(total=total, initial=start, desc="fine-tuning", unit="step", disable=not show)
        try:
            for step in range(start + 1, total + 1):
                batch = next(iterator)
                placed = {k: run.model.place_batch(batch[k]) for k in ("ids", "attend", "loss")}
                trainable, opt_state, metrics = step_fn(trainable, opt_state, frozen, placed, masks)
                history.append(
                    {
                        "step": step,
                        "loss": _host_scalar(metrics["loss"]),
                        "tokens": int(_host_scalar(metrics["tokens"])),
                        "grad_norm": _host_scalar(metrics["grad_norm"]),
                        "lr": float(schedule(step - 1)),
                    }
                )
                bar.update()
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
                stop = distributed.any_process(flag.is_set())  # every process stops at the same step
                if stop or (every and step % every == 0) or step == total:
                    record = {**run.fingerprint, **record_extra, "step": step, "history": history}
                    store.save(step, trainable, opt_state, iterator, record)
                if stop and step < total:
                    raise RunInterrupted(flag.signum or signal.SIGTERM, step, total, str(store.directory))
                release_freed_memory()  # the step's temporaries (and a save's host copies) are free now
        finally:
            bar.close()
    return trainable


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (macOS, musl)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand heap memory freed since the last call back to the OS (glibc `malloc_trim(0)`).

    Every step, XLA's CPU runtime allocates and frees the step's temporaries (gradients, activations,
    vocabulary chunks). glibc keeps freed chunks below its mmap threshold in per-thread arenas, where
    they fragment, so without trimming the resident memory of a run creeps up step after step while
    the live memory stays flat (docs/finetune.md has the measurements). A no-op without glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _count_trained(trainable: Mapping[str, Any], update_masks: Mapping[str, np.ndarray]) -> int:
    """Weights the optimizer can change (only the masked entries in "neurons" mode)."""
    return int(
        sum(
            int(np.broadcast_to(update_masks[k], np.shape(v)).sum()) if k in update_masks else int(np.prod(np.shape(v)))
            for k, v in trainable.items()
        )
    )


def _write_outputs(run: _Run, params: dict, history: list, evals: dict | None, timings: dict, t0: float) -> Path:
    """The final jlang checkpoint (collective), the HF export, and (process 0) loss.json/png, config, summary."""
    import jax
    import yaml

    from jlang.models.model import Model, decoder_from_params

    cfg, model, out = run.cfg, run.model, Path(run.cfg.out)
    final = out / "checkpoint"
    t = time.perf_counter()
    tuned = Model(
        decoder_from_params(model.config, params),
        model.tokenizer,
        name=f"{model.name}-finetuned",
        source=str(final),
        mesh=run.mesh,
        hf_config=model.hf_config,
    )
    if final.exists() and distributed.is_primary():  # a resumed run that had saved it already: write it again
        shutil.rmtree(final)
    distributed.barrier("jlang-finetune-final-cleared")
    tuned.save(final)  # collective on several processes
    if cfg.export_hf:
        from jlang.models.export import save_hf

        save_hf(tuned, out / "hf")
    timings["save"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    if not distributed.is_primary():
        return final
    mode = cfg.trainable + (f" ({', '.join(cfg.mask_languages)})" if cfg.trainable == "neurons" else "")
    result = {
        "model": model.name,
        "source": str(cfg.model.source),
        "trainable": mode,
        "trainable_names": ", ".join(run.names),
        "trainable_params": _count_trained({k: params[k] for k in run.names}, run.update_masks),
        "languages": list(run.rows.languages),
        "train_rows": len(run.rows),
        "skipped_rows": run.rows.skipped,
        "loss_tokens": run.rows.loss_tokens(),
        "steps": cfg.train.steps,
        "batch_size": cfg.train.batch_size,
        "seq_len": cfg.data.seq_len,
        "history": history,
        "eval": evals,
        "timings": timings,
        "peak_rss_gb": peak_rss_gb(),
        "processes": jax.process_count(),
    }
    _write_json(out / "loss.json", result)
    plot_loss(history, out / "loss.png", title=f"{model.name}: {mode}, {cfg.train.steps} steps", evals=evals)
    resolved = json.loads(json.dumps(config_lib.to_dict(cfg)))
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(result), encoding="utf-8")
    return final


def finetune(cfg: FinetuneConfig, *, progress: bool = True, resume: bool = False) -> Path:
    """Fine-tune `cfg.model` on `cfg.data`; return the directory of the final jlang checkpoint (`{out}/checkpoint`).

    Args:
      cfg: the run (`load_finetune_config`); validated again here.
      progress: a progress bar with the loss, and a start line (process 0).
      resume: continue from the newest checkpoint in the checkpoint directory (its fingerprint must
        match); without it, an existing checkpoint is an error (a half-done run is never clobbered).
    Raises:
      jlang.io.checkpoint.RunInterrupted: SIGTERM/SIGINT arrived; a checkpoint was saved first.
      jlang.io.checkpoint.ResumeError, ConfigError, MaskError, CorpusError, FileExistsError: bad input,
        before training starts.
    """
    from jlang.train import data as data_lib

    validate_config(cfg)
    t0 = time.perf_counter()
    show = progress and distributed.is_primary()
    ckpt_dir = Path(cfg.train.checkpoint_dir) if cfg.train.checkpoint_dir else Path(cfg.out) / "train-checkpoint"
    store = _Checkpoints(ckpt_dir)
    timings: dict[str, float] = {}
    try:
        latest = _check_outputs(cfg, store, resume)
        t = time.perf_counter()
        run = _prepare(cfg, show=show)
        timings["load model and data"] = time.perf_counter() - t
        trainable, frozen, opt_state, masks, step_fn, schedule = _training_state(run)
        dataset = data_lib.batch_dataset(
            run.rows, batch_size=cfg.train.batch_size, seed=cfg.train.seed, shard=run.shard, shards=run.shards
        )
        iterator = data_lib.iterator(dataset)
        start, history, eval_before = 0, [], None
        if resume and latest is None and show:
            print(f"no checkpoint in {ckpt_dir}; starting from the first step", flush=True)
        if latest is not None:
            saved = store.read_record(latest)
            _check_fingerprint(saved, run.fingerprint, str(ckpt_dir))
            templates = abstract(trainable), abstract(opt_state)
            fresh, opt_state = trainable, None  # the fresh moments go now, before the saved ones arrive
            trainable, opt_state = store.restore(latest, *templates, iterator)
            for v in fresh.values():  # the model's copies of the trained weights, as donation frees them otherwise
                v.delete()
            del fresh
            start, history, eval_before = latest, list(saved["history"]), saved.get("eval_before")
            if show:
                print(f"resuming from {ckpt_dir} at step {start}", flush=True)
        evaluate = _evaluator(run, frozen)
        if evaluate is not None and eval_before is None:
            t = time.perf_counter()
            eval_before = evaluate(trainable)
            timings["held-out loss before"] = time.perf_counter() - t
        t = time.perf_counter()
        state = (trainable, frozen, opt_state, masks, step_fn, schedule)
        del trainable, opt_state  # `state` holds them; the loop consumes (donates) them
        trainable = _train_loop(run, state, store, iterator, start, history, {"eval_before": eval_before}, show=show)
        del state
        if cfg.train.steps > start:
            timings["training"] = time.perf_counter() - t
    finally:
        store.close()
    evals = None
    if evaluate is not None:
        t = time.perf_counter()
        evals = {"before": eval_before, "after": evaluate(trainable)}
        timings["held-out loss after"] = time.perf_counter() - t
    final = _write_outputs(run, {**frozen, **trainable}, history, evals, timings, t0)
    store.remove()  # last: a run killed before this resumes from its final checkpoint and writes again
    return final


def abstract(tree):
    """`jax.ShapeDtypeStruct`s (with shardings) of a tree of arrays: what orbax restores into."""
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _host_scalar(x) -> float:
    """A replicated scalar as a Python float (reads this process's copy: no collective)."""
    return float(np.asarray(x.addressable_data(0) if hasattr(x, "addressable_data") else x))


def _digest(arr: np.ndarray) -> str:
    import hashlib

    return hashlib.blake2b(memoryview(np.ascontiguousarray(arr)).cast("B"), digest_size=16).hexdigest()


def _on_mesh(x, mesh) -> bool:
    from jax.sharding import NamedSharding

    return isinstance(getattr(x, "sharding", None), NamedSharding) and x.sharding.mesh == mesh


def _replicate(x, mesh):
    """`x` replicated on every device of `mesh` (as is, without a mesh)."""
    import jax

    from jlang import parallel

    if mesh is None:
        return x
    if jax.process_count() > 1:
        return jax.make_array_from_process_local_data(parallel.replicated(mesh), np.asarray(x))
    return jax.device_put(x, parallel.replicated(mesh))
