"""Checkpoint tensors from a GGUF file, as the Hugging Face checkpoint would hold them.

A GGUF file (llama.cpp's format) holds a whole model: metadata that stands in for
`config.json` and the tokenizer files, and tensors that are often quantised.
`GGUFSource` presents one as a `jlang.models.sources.CheckpointSource`, so the
converter never learns which format it read: each tensor is dequantised to float32
on request, one at a time, and returned under its Hugging Face name, in Hugging
Face layout, with the values `transformers` itself loads from the same file.

llama.cpp's converter does more than rename. What it did, and what is undone here
(`transformers/modeling_gguf_pytorch_utils.py` is the reference):

- names: `blk.N.attn_q.weight` is `model.layers.N.self_attn.q_proj.weight`, and so
  on (`_TOP_LEVEL_NAMES`, `_ARCHITECTURES`);
- shapes: GGUF lists dimensions fastest-moving first, so they are reversed;
- llama: the rows of `attn_q`/`attn_k` are permuted from the interleaved rotary
  layout of Meta's checkpoints to the half-split one (`unpermute_rows`);
- gemma2/gemma3: RMSNorm weights are stored as `w + 1` (Gemma's norm computes
  `x * (1 + w)`, llama.cpp's `x * w`), so 1 is subtracted from every `*norm.weight`;
- tied embeddings: there is no `output.weight`, and then no `lm_head.weight`.

The config is built from the metadata the way transformers builds it
(`transformers_config_dict`), without the second full parse and the PyTorch import
that `AutoConfig.from_pretrained(..., gguf_file=...)` costs; tests check that both
agree. The tokenizer is transformers' own rebuild from the metadata.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from jlang.models.sources import CheckpointError

# `transformers` is imported inside the functions that read a config or tokenizer: it imports
# torch whenever torch is installed (seconds), which nothing else here needs.


@dataclass(frozen=True)
class GGUFArchitecture:
    """How llama.cpp wrote one `general.architecture`, so that it can be undone.

    `layer_names` maps the part of a GGUF name between `blk.N.` and `.weight`/`.bias`
    to the part of the Hugging Face name between `model.layers.N.` and the same suffix.
    """

    layer_names: Mapping[str, str]
    permute_qk: bool = False  # rows of attn_q/attn_k permuted by llama.cpp's LlamaModel.permute
    norm_offset: float = 0.0  # norm weights stored as `w + norm_offset`
    ignored: frozenset[str] = field(default_factory=frozenset)  # GGUF-only tensors, not in an HF checkpoint


_TOP_LEVEL_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "output": "lm_head",
    }
)

_ATTENTION_AND_MLP = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
}
# Llama-style blocks have two norms; llama.cpp calls the second (pre-MLP) one ffn_norm.
_TWO_NORMS = {"ffn_norm": "post_attention_layernorm"}
# Gemma 2/3 blocks have four; here ffn_norm is the *pre*-feedforward norm.
_FOUR_NORMS = {
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}

ARCHITECTURES: Mapping[str, GGUFArchitecture] = MappingProxyType(
    {
        # rope_freqs: Llama 3.1's precomputed rope scaling factors; transformers drops them too.
        "llama": GGUFArchitecture(
            {**_ATTENTION_AND_MLP, **_TWO_NORMS}, permute_qk=True, ignored=frozenset({"rope_freqs.weight"})
        ),
        # llama.cpp writes Mistral as "llama"; a file that says "mistral" is not unpermuted by transformers either.
        "mistral": GGUFArchitecture({**_ATTENTION_AND_MLP, **_TWO_NORMS}, ignored=frozenset({"rope_freqs.weight"})),
        "qwen2": GGUFArchitecture({**_ATTENTION_AND_MLP, **_TWO_NORMS}),
        "qwen3": GGUFArchitecture({**_ATTENTION_AND_MLP, **_TWO_NORMS, **_QK_NORMS}),
        "gemma2": GGUFArchitecture({**_ATTENTION_AND_MLP, **_FOUR_NORMS}, norm_offset=1.0),
        "gemma3": GGUFArchitecture({**_ATTENTION_AND_MLP, **_FOUR_NORMS, **_QK_NORMS}, norm_offset=1.0),
    }
)

_LAYER_NAME = re.compile(r"blk\.(\d+)\.(.+)\.(weight|bias)")
_TOP_NAME = re.compile(r"([^.]+)\.(weight|bias)")


def hf_tensor_name(gguf_name: str, architecture: GGUFArchitecture) -> str | None:
    """The Hugging Face name of GGUF tensor `gguf_name`, or None if it has none."""
    if m := _LAYER_NAME.fullmatch(gguf_name):
        block, leaf, suffix = m.groups()
        hf_leaf = architecture.layer_names.get(leaf)
        return None if hf_leaf is None else f"model.layers.{block}.{hf_leaf}.{suffix}"
    if m := _TOP_NAME.fullmatch(gguf_name):
        hf_leaf = _TOP_LEVEL_NAMES.get(m.group(1))
        return None if hf_leaf is None else f"{hf_leaf}.{m.group(2)}"
    return None


def unpermute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `LlamaModel.permute` on the rows of a q/k projection (or its bias).

    llama.cpp reorders each head's rows from Hugging Face's rotate-half layout
    `[x0..x(d/2-1), y0..y(d/2-1)]` to the interleaved `[x0, y0, x1, y1, ...]` that its
    rope kernel expects; this puts them back. `n_head` is the number of heads the
    rows belong to (the key/value head count for `attn_k`).
    """
    half = weight.shape[0] // n_head // 2
    return weight.reshape(n_head, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _field_value(reader_field) -> Any:
    """A metadata value as transformers parses it: a scalar, a string, or a list."""
    from transformers.integrations.ggml import _gguf_parse_value

    values = [_gguf_parse_value(reader_field.parts[i], reader_field.types) for i in reader_field.data]
    return values[0] if len(values) == 1 else values


def transformers_config_dict(fields: Mapping[str, Any], tensor_names: list[str]) -> dict[str, Any]:
    """The config dict transformers builds for a GGUF file with these metadata fields and tensors.

    A faithful copy of the config half of transformers'
    `modeling_gguf_pytorch_utils.load_gguf_checkpoint` for the dense decoders in
    `ARCHITECTURES`, using its own key tables (`GGUF_CONFIG_MAPPING`); `fields` are a
    `gguf.GGUFReader`'s. Only the values transformers keeps are parsed, so the
    vocabulary (hundreds of thousands of strings) is not decoded here.
    """
    from transformers.integrations.ggml import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

    architecture = _field_value(fields["general.architecture"])
    names = [_field_value(fields["general.name"])] if "general.name" in fields else []
    # transformers' rule, quirks included: only a model *named* exactly "mistral" becomes one
    updated = "mistral" if "llama" in architecture and "mistral" in names else architecture

    config: dict[str, Any] = {"tie_word_embeddings": "output.weight" not in tensor_names}
    for key, value in GGUF_CONFIG_DEFAULTS_MAPPING.get(
        updated, GGUF_CONFIG_DEFAULTS_MAPPING.get(architecture, {})
    ).items():
        config.setdefault(key, value)
    for gguf_key, reader_field in fields.items():
        prefix, _, config_key = gguf_key.replace(architecture, updated).partition(".")
        target = GGUF_CONFIG_MAPPING.get(prefix, {}).get(config_key)
        if target is None or target == -1:
            continue
        value = _field_value(reader_field)
        if isinstance(value, str) and architecture in value:
            value = value.replace(architecture, updated)
        config[target] = value
    if config.get("model_type") == "gemma3":  # the GGUF holds only Gemma 3's text decoder
        config["model_type"] = "gemma3_text"
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in fields:
        config["vocab_size"] = len(fields["tokenizer.ggml.tokens"].data)
    return config


def causal_lm_architectures(model_type: str) -> list[str]:
    """`config.architectures` for a causal LM of `model_type`, e.g. ["Gemma3ForCausalLM"].

    A GGUF does not say which class it was converted from, and transformers leaves
    `architectures` unset; jlang's loaders pick the family from it.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    return [name] if name else []


def _open_reader(path: Path):
    """A `gguf.GGUFReader` for `path`, or a `CheckpointError` saying why the file is unusable.

    Checks what the reader does not: the magic with a readable message, and that
    every tensor's bytes lie inside the file, so a truncated download fails here and
    not when its last tensor is read.
    """
    if not path.exists():
        raise CheckpointError(f"{path}: no such GGUF file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (a GGUF checkpoint is a single .gguf file)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'; {size} bytes)")
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, MemoryError) as e:
        raise CheckpointError(
            f"{path}: truncated or corrupt GGUF file ({size} bytes): {type(e).__name__}: {e}. "
            "Download or assemble it again."
        ) from None
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise CheckpointError(
                f"{path}: truncated GGUF file: tensor {tensor.name} ends at byte {end}, the file has {size}"
            )
    return reader


class GGUFSource:
    """A `.gguf` checkpoint, read as the Hugging Face checkpoint of the same model.

    Construction reads the metadata and tensor table (memory-mapped, no tensor data)
    and fails with `CheckpointError` on a missing, truncated or corrupt file, an
    unsupported architecture, or a tensor it cannot name. `read` dequantises one
    tensor to float32.
    """

    CACHE_BYTES = 1 << 30  # dequantised tensors kept for `read_region`

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        reader = _open_reader(self.path)
        fields = reader.fields
        if "general.architecture" not in fields:
            raise CheckpointError(f"{self.path}: no general.architecture in the GGUF metadata")
        self.architecture: str = _field_value(fields["general.architecture"])
        if self.architecture not in ARCHITECTURES:
            raise CheckpointError(
                f"{self.path}: GGUF architecture {self.architecture!r} is not supported; "
                f"supported: {', '.join(ARCHITECTURES)}"
            )
        arch = ARCHITECTURES[self.architecture]
        tensor_names = [t.name for t in reader.tensors]
        self._config_dict = transformers_config_dict(fields, tensor_names)
        self._config_dict["architectures"] = causal_lm_architectures(self._config_dict["model_type"])
        self._config_dict["_name_or_path"] = str(self.path)
        self._arch = arch
        self._tensors = {}
        unknown = []
        for tensor in reader.tensors:
            name = hf_tensor_name(tensor.name, arch)
            if name is not None:
                self._tensors[name] = tensor
            elif tensor.name not in arch.ignored:
                unknown.append(tensor.name)
        if unknown:
            raise CheckpointError(
                f"{self.path}: GGUF tensors with no Hugging Face name for architecture "
                f"{self.architecture!r}: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}"
            )
        self._reader = reader
        self._config = None
        self._recent: dict[str, np.ndarray] = {}  # dequantised tensors, least recently read first

    @property
    def config(self):
        """The transformers config (e.g. `Gemma3TextConfig`) with `architectures` set."""
        from transformers import CONFIG_MAPPING

        if self._config is None:
            model_type = self._config_dict["model_type"]
            self._config = CONFIG_MAPPING[model_type].from_dict(dict(self._config_dict))
        return self._config

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(int(d) for d in reversed(t.shape)) for name, t in self._tensors.items()}

    def ggml_types(self) -> dict[str, str]:
        """Hugging Face tensor name -> how the file stores it ("F32", "Q8_0", "Q4_K", ...)."""
        return {name: t.tensor_type.name for name, t in self._tensors.items()}

    def read(self, name: str) -> np.ndarray:
        """Tensor `name`, dequantised to a fresh float32 array in Hugging Face layout."""
        tensor = self._tensors.get(name)
        if tensor is None:
            raise CheckpointError(f"{self.path}: no tensor {name!r} in this GGUF checkpoint")
        shape = tuple(int(d) for d in reversed(tensor.shape))
        weight = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        if tensor.tensor_type == GGMLQuantizationType.F32:  # a view of the memory map: own it
            weight = weight.copy()
        weight = weight.astype(np.float32, copy=False)
        if self._arch.permute_qk and re.search(r"\.attn_[qk]\.", tensor.name):
            n_heads = self._config_dict.get("num_attention_heads")
            n_kv_heads = self._config_dict.get("num_key_value_heads")
            if None not in (n_heads, n_kv_heads):  # as transformers: no head counts, no unpermuting
                weight = unpermute_rows(weight, n_heads if ".attn_q." in tensor.name else n_kv_heads)
        if self._arch.norm_offset and tensor.name.endswith("norm.weight"):
            weight = weight - np.float32(self._arch.norm_offset)
        return weight

    def read_region(self, name: str, index: tuple[slice, ...], *, again: bool = False) -> np.ndarray:
        """A region of tensor `name`. GGUF blocks are quantised along rows, so the whole tensor is dequantised;
        with `again` (more regions of it will be read: a mesh) it is kept, up to `CACHE_BYTES` of tensors."""
        whole = self._recent.pop(name, None)
        if whole is None:
            whole = self.read(name)
        if again:
            self._recent[name] = whole
            while sum(a.nbytes for a in self._recent.values()) > self.CACHE_BYTES and len(self._recent) > 1:
                self._recent.pop(next(iter(self._recent)))
        else:
            self._recent.clear()
        return np.ascontiguousarray(whole[index])

    def tokenizer(self):
        """transformers' tokenizer rebuilt from the GGUF metadata (vocabulary, merges, special tokens)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name)
