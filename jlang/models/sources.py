"""Where checkpoint tensors come from: a Hugging Face directory of safetensors files.

A *checkpoint source* is the one interface the converter reads: a `transformers`
config, the Hugging Face names and shapes of its tensors, a way to read one
tensor at a time as a NumPy array in Hugging Face layout (`Linear.weight` is
`[out, in]`), and the tokenizer. Reading tensor by tensor is what keeps peak
host memory at about one copy of the model: the converter casts and places each
tensor before it asks for the next.

`jlang.models.gguf.GGUFSource` implements the same interface for GGUF files.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
from safetensors import safe_open

# `transformers` is imported inside the functions that read a config or tokenizer: it imports
# torch whenever torch is installed (seconds), which nothing else here needs.


class CheckpointError(ValueError):
    """A checkpoint on disk cannot be used as it is; the message says what to fix."""


class CheckpointSource(Protocol):
    """What the converter needs from a checkpoint, whatever its file format."""

    path: Path

    @property
    def config(self):  # transformers.PretrainedConfig
        ...

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Hugging Face tensor name -> shape, for every tensor in the checkpoint."""
        ...

    def read(self, name: str) -> np.ndarray:
        """One tensor, Hugging Face layout, as a NumPy array (float32 or the file's float dtype)."""
        ...

    def read_region(self, name: str, index: tuple[slice, ...], *, again: bool = False) -> np.ndarray:
        """`read(name)[index]`, reading no more of the file than the format allows; `again`: other regions of
        this tensor will be asked for next (a source that must read whole tensors may keep it meanwhile)."""
        ...

    def tokenizer(self):  # transformers.PreTrainedTokenizerBase
        ...


def _check_safetensors_header(file: Path) -> None:
    """Fail early, naming the file, when a safetensors file is truncated or is not one.

    `safe_open` would also fail, but only with a generic message, and for a file
    truncated inside the data section only when the missing tensor is read, after
    minutes of converting the others.
    """
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{file}: not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise CheckpointError(
                f"{file}: truncated safetensors file (header says {header_len} bytes, file has {size})"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{file}: corrupt safetensors header ({e})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{file}: truncated safetensors file: tensors need {8 + header_len + end} bytes, file has {size}"
        )


class SafetensorsSource:
    """A local Hugging Face model directory: config.json, tokenizer files, and one or
    many `*.safetensors` files (with `model.safetensors.index.json` when sharded)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a directory")
        if not (self.path / "config.json").is_file():
            raise CheckpointError(f"{self.path}: no config.json, so this is not a Hugging Face model directory")
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.path / f).is_file()]
            if missing:
                raise CheckpointError(f"{index} names files that are not there: {', '.join(missing)}")
        else:
            files = sorted(p.name for p in self.path.glob("*.safetensors"))
            if not files:
                raise CheckpointError(
                    f"{self.path}: no *.safetensors files (PyTorch .bin checkpoints are not read: "
                    "convert them with `save_pretrained(..., safe_serialization=True)`)"
                )

        self._files = [self.path / f for f in files]
        self._name_to_file: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for file in self._files:
            _check_safetensors_header(file)
            with safe_open(file, framework="numpy") as f:
                for name in f.keys():
                    self._name_to_file[name] = file
                    self._shapes[name] = tuple(f.get_slice(name).get_shape())
        self._config = None

    @property
    def config(self):
        from transformers import AutoConfig

        if self._config is None:
            try:
                self._config = AutoConfig.from_pretrained(self.path)
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{self.path}/config.json: {e}") from None
        return self._config

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def read(self, name: str) -> np.ndarray:
        with safe_open(self._name_to_file[name], framework="numpy") as f:
            return f.get_tensor(name)

    def read_region(self, name: str, index: tuple[slice, ...], *, again: bool = False) -> np.ndarray:
        """Only the bytes of `index` (the file's dtype: bf16 stays bf16). Opened per call, so the memory map
        (whose touched pages count in the process's RSS) is released after every tensor."""
        with safe_open(self._name_to_file[name], framework="numpy") as f:
            return f.get_slice(name)[index]

    def tokenizer(self):
        """The directory's tokenizer, or None (with a warning) when it has none: weights-only
        directories still load, and only text-in commands need a tokenizer (token-id corpora do not)."""
        files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
        if not any((self.path / name).exists() for name in files):
            warnings.warn(
                f"{self.path}: no tokenizer files ({', '.join(files)}); Model.tokenizer is None "
                "(token-id corpora still work; text needs the model's tokenizer files)",
                stacklevel=2,
            )
            return None
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError, TypeError) as e:
            warnings.warn(f"{self.path}: no usable tokenizer ({e}); Model.tokenizer is None", stacklevel=2)
            return None
