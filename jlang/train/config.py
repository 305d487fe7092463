"""The fine-tuning run's config (`jlang finetune CONFIG`): its sections, their validation and loading from YAML.

Every value that cannot work is named before any model is loaded (`validate_config`);
`load_finetune_config` reads YAML with `key.sub=value` overrides and validates.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

from jlang import config as config_lib
from jlang.config import ConfigError, MeshSection, ModelSection
from jlang.models.decoder import LOGICAL_AXES
from jlang.train.data import DEFAULT_TEMPLATE

__all__ = [
    "DataSection",
    "FinetuneConfig",
    "TrainSection",
    "load_finetune_config",
    "validate_config",
]


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
    """`jlang finetune CONFIG`: supervised alignment fine-tuning (`jlang.train.sft`)."""

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


def _train_problems(t: TrainSection) -> list[str]:
    problems = []
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
    return problems


def _data_problems(d: DataSection) -> list[str]:
    problems = []
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
    return problems


def _trainable_problems(cfg: FinetuneConfig) -> list[str]:
    problems = []
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
    return problems


def validate_config(cfg: FinetuneConfig) -> None:
    """Raise `ConfigError` for every value that cannot work, before any model is loaded."""
    problems = []
    if cfg.trainable not in ("all", "neurons"):
        problems.append(f"trainable {cfg.trainable!r} is not one of ['all', 'neurons']")
    problems += _train_problems(cfg.train) + _data_problems(cfg.data) + _trainable_problems(cfg)
    if problems:
        raise ConfigError("bad fine-tuning config: " + "; ".join(problems))


def load_finetune_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """Load a `FinetuneConfig` from YAML with `key.sub=value` overrides, and validate it."""
    cfg = config_lib.load_config(path, FinetuneConfig, list(overrides))
    validate_config(cfg)
    return cfg
