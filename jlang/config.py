"""Typed run configurations, loaded from YAML (`configs/*.yaml`) with command-line overrides.

A config is a tree of frozen dataclasses. Loading is strict: an unknown key or
a value of the wrong type is an error that names the key, its place in the file
and what is allowed, before any work starts (levanter's habit).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
    source: str = "default"  # "default", "smollm2", an HF directory, a .gguf file or a jlang checkpoint
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int | None = None  # devices along the batch axis (default: all)
    model: int | None = None  # devices along the neuron/head axis (default: 1)


@dataclasses.dataclass(frozen=True)
class CorpusSection:
    # "default" (the packaged gettext corpus) or a directory with one `{lang}.txt`/`.jsonl` per language
    source: str = "default"
    languages: tuple[str, ...] = ("en", "zh", "fr", "es", "ru", "ja", "de", "ar", "ko", "id", "vi", "hi")
    split: Literal["train", "heldout"] = "train"
    mode: Literal["pack", "pad"] = "pack"
    max_tokens_per_language: int | None = None
    add_bos: bool = True


@dataclasses.dataclass(frozen=True)
class StatsSection:
    batch_size: int = 8
    seq_len: int = 256


@dataclasses.dataclass(frozen=True)
class IdentifySection:
    method: Literal["lape", "ternary"] = "lape"
    top_rate: float = 0.01
    filter_rate: float = 0.95
    activation_bar_ratio: float = 0.95
    lam: float | Literal["auto"] = "auto"  # ternary only


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """`jlang run CONFIG`: statistics, identification, masks, heat map and summary."""

    out: str = "runs/lape_default"
    model: ModelSection = ModelSection()
    mesh: MeshSection = MeshSection()
    corpus: CorpusSection = CorpusSection()
    stats: StatsSection = StatsSection()
    identify: IdentifySection = IdentifySection()
    seed: int = 0


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check_type(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    return cls(**{k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()})


def _set_path(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[leaf] = value


def load_config(path: str | Path | None, cls: type = RunConfig, overrides: list[str] = ()) -> Any:
    """Load a YAML config and apply `key.sub=value` overrides (values parsed as YAML)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw))
    try:
        return from_dict(cls, data, "config")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
