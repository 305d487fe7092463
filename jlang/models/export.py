"""A jlang model -> a Hugging Face directory (`config.json`, `model.safetensors`, tokenizer) that
`transformers.AutoModelForCausalLM.from_pretrained` loads.

This inverts `jlang.models.convert`. jlang keeps every parameter in Hugging Face
conventions except for layout, so the inverse is short:

- kernels: jlang stores Flax kernels `[in, out]` (`convert.TRANSPOSED`); HF
  `Linear.weight` is `[out, in]`, so they are transposed back;
- layers: jlang stacks per-layer tensors on a leading `[L, ...]` axis; HF names
  one tensor per layer (`model.layers.{i}.…`, the family's name map);
- tied embeddings: no `lm_head.weight` is written (HF ties it to `embed_tokens`).

What a GGUF source changed is already undone when jlang reads it
(`jlang.models.gguf`): the rows of llama's `attn_q`/`attn_k` are back in HF's
rotate-half order, and Gemma's norm weights are back to HF's `w` (the file
stores `w + 1`). So an export of a GGUF-sourced model is a plain HF checkpoint:
nothing is permuted or offset on the way out, and Gemma norms stay `w` (HF
Gemma computes `x * (1 + w)`, as jlang does with `norm_offset`).

The config is built from jlang's `ModelConfig`, the numbers the decoder really
uses, not copied from the source (a GGUF-sourced model's config was itself
rebuilt from metadata); only non-architectural values (token ids, maximum
positions) are taken from the source config when it has them. Before anything
is written, the config is read back with `jlang.models.families.model_config_from_hf`
and must give the same `ModelConfig`, so an export never silently describes
another model.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jlang import parallel
from jlang.io.atomic import atomic_directory
from jlang.models.convert import TRANSPOSED, fused_parts, hf_names, hf_shape
from jlang.models.decoder import param_shapes
from jlang.models.families import FAMILIES, ModelConfig, RoPE, model_config_from_hf
from jlang.models.names import Part
from jlang.parallel import distributed

__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "ExportError",
    "hf_config_dict",
    "hf_layout",
    "hf_tensors",
    "index_json",
    "parse_size",
    "save_hf",
    "shard_plan",
    "write_safetensors",
]

# `transformers` is imported inside the functions that read a config or tokenizer: it imports
# torch whenever torch is installed (seconds), which nothing else here needs.


class ExportError(ValueError):
    """The model has a feature its family's Hugging Face config cannot express."""


# jlang family -> (HF model_type, activation key of the config)
_MODEL_TYPES = {
    "llama": ("llama", "hidden_act"),
    "mistral": ("mistral", "hidden_act"),
    "qwen2": ("qwen2", "hidden_act"),
    "qwen3": ("qwen3", "hidden_act"),
    "gemma": ("gemma", "hidden_activation"),
    "gemma2": ("gemma2", "hidden_activation"),
    "gemma3": ("gemma3_text", "hidden_activation"),
    "cohere": ("cohere", "hidden_act"),
    "cohere2": ("cohere2", "hidden_act"),
    "bloom": ("bloom", None),
    "opt": ("opt", "activation_function"),
    "phi": ("phi", "hidden_act"),
    "phi3": ("phi3", "hidden_act"),
}
_HF_ACTIVATIONS = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "relu": "relu"}
# Values that do not change the computation, taken from the source config when it has them.
_CARRIED = (
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "initializer_range",
)


def _rope_dict(rope: RoPE) -> dict[str, Any]:
    """HF `rope_parameters` for one attention type: the kind, the base and every field off its default."""
    out: dict[str, Any] = {"rope_type": rope.kind, "rope_theta": rope.theta}
    default = RoPE(theta=rope.theta)
    for name in (
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
    ):
        value = getattr(rope, name)
        if value != getattr(default, name) or rope.kind == "llama3" or (rope.kind == "linear" and name == "factor"):
            out[name] = value
    return out


def _layer_types(cfg: ModelConfig) -> list[str]:
    return ["sliding_attention" if local else "full_attention" for local in cfg.local_layers]


def hf_config_dict(
    cfg: ModelConfig, *, source_config: dict | None = None, tokenizer: Any = None, dtype: str = "float32"
) -> dict[str, Any]:
    """The `config.json` of `cfg` for its family's `transformers` class (checked by reading it back).

    Args:
      cfg: the model's `ModelConfig`.
      source_config: the config the model was loaded from (`Model.hf_config`): token ids and
        maximum positions are carried over from it.
      tokenizer: fills token ids the source config lacks.
      dtype: the parameters' dtype.
    Raises:
      ExportError: the family's HF config cannot express `cfg` (e.g. an attention scale other than
        `head_dim ** -0.5` outside Gemma 2/3).
    """
    if cfg.family not in _MODEL_TYPES:
        raise ExportError(f"no Hugging Face export for family {cfg.family!r}; supported: {sorted(_MODEL_TYPES)}")
    if cfg.family in _PLAIN_FAMILIES:
        return _finish(_plain_family_config(cfg, dtype), cfg, source_config, tokenizer)
    model_type, act_key = _MODEL_TYPES[cfg.family]
    family = FAMILIES[cfg.family]
    d: dict[str, Any] = {
        "architectures": [family.architectures[0]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        act_key: _HF_ACTIVATIONS[cfg.activation],
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.o_bias,
        "dtype": dtype,
    }
    problems = []
    if cfg.family == "gemma3":
        d["rope_parameters"] = {
            "full_attention": _rope_dict(cfg.rope_global),
            "sliding_attention": _rope_dict(cfg.rope_local),
        }
    else:
        d["rope_parameters"] = _rope_dict(cfg.rope_global)
        if any(cfg.local_layers) and cfg.rope_local != cfg.rope_global:
            problems.append(f"{cfg.family} has one RoPE for all layers, this model has a local and a global one")
    if any(cfg.local_layers):
        d["sliding_window"] = cfg.sliding_window
        if cfg.family == "mistral":
            if not all(cfg.local_layers):
                problems.append("Mistral uses the sliding window on every layer or none")
        else:
            d["layer_types"] = _layer_types(cfg)
            if cfg.family in ("qwen2", "qwen3"):
                d["use_sliding_window"] = True
    else:
        d["sliding_window"] = None
        if cfg.family in ("qwen2", "qwen3"):
            d["use_sliding_window"] = False
        if cfg.family in ("gemma2", "gemma3", "qwen2", "qwen3"):
            d["layer_types"] = _layer_types(cfg)
    if cfg.family in ("gemma2", "gemma3"):
        scalar = 1.0 / cfg.attn_scale**2
        d["query_pre_attn_scalar"] = round(scalar) if math.isclose(scalar, round(scalar), rel_tol=1e-9) else scalar
        d["attn_logit_softcapping"] = cfg.attn_softcap
        d["final_logit_softcapping"] = cfg.final_softcap
    else:
        if not math.isclose(cfg.attn_scale, cfg.head_dim**-0.5, rel_tol=1e-9):
            problems.append(f"attention scale {cfg.attn_scale} is not head_dim ** -0.5, which {cfg.family} assumes")
        if cfg.attn_softcap is not None or cfg.final_softcap is not None:
            problems.append(f"{cfg.family} has no logit soft-capping")
    if cfg.family == "qwen2" and cfg.o_bias:
        problems.append("Qwen2 has biases on q/k/v only, this model has one on o too")
    if cfg.family not in ("qwen2",) and cfg.qkv_bias != cfg.o_bias:
        problems.append(f"{cfg.family}'s attention_bias puts biases on q, k, v and o together")
    if problems:
        raise ExportError("cannot export to a Hugging Face config: " + "; ".join(problems))
    return _finish(d, cfg, source_config, tokenizer)


def _finish(d: dict[str, Any], cfg: ModelConfig, source_config: dict | None, tokenizer: Any) -> dict[str, Any]:
    """Carry the non-architectural values over, fill token ids, check the round trip."""
    source_config = source_config or {}
    for key in _CARRIED:
        if source_config.get(key) is not None:
            d[key] = source_config[key]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if d.get(key) is None and tokenizer is not None and getattr(tokenizer, key, None) is not None:
            d[key] = int(getattr(tokenizer, key))
    _check_round_trip(d, cfg)
    return d


_PLAIN_FAMILIES = ("cohere", "cohere2", "bloom", "opt", "phi", "phi3")


def _plain_family_config(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
    """`config.json` of a Cohere, BLOOM, OPT or Phi model (whatever it cannot say, `_check_round_trip` refuses)."""
    family = FAMILIES[cfg.family]
    d: dict[str, Any] = {
        "architectures": [family.architectures[0]],
        "model_type": _MODEL_TYPES[cfg.family][0],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "tie_word_embeddings": cfg.tie_embeddings,
        "dtype": dtype,
    }
    act_key = _MODEL_TYPES[cfg.family][1]
    if act_key is not None:
        d[act_key] = (
            "gelu_new" if cfg.family == "phi" and cfg.activation == "gelu_tanh" else _HF_ACTIVATIONS[cfg.activation]
        )
    if cfg.family == "bloom":
        d |= {"n_layer": cfg.num_layers, "n_head": cfg.num_heads, "layer_norm_epsilon": cfg.norm_eps}
        d["apply_residual_connection_post_layernorm"] = cfg.residual_from_norm
        return d
    if cfg.family == "opt":
        d |= {"ffn_dim": cfg.d_ff, "do_layer_norm_before": not cfg.post_norm, "enable_bias": cfg.mlp_bias}
        d |= {"word_embed_proj_dim": cfg.embed_dim or cfg.d_model, "max_position_embeddings": cfg.num_positions - 2}
        d["_remove_final_layer_norm"] = not cfg.post_norm and not cfg.has_final_norm
        return d
    d |= {"intermediate_size": cfg.d_ff, "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim}
    rope = _rope_dict(cfg.rope_global)
    if cfg.rope_dims is not None:
        rope["partial_rotary_factor"] = cfg.rope_dims / cfg.head_dim
    d["rope_parameters"] = rope
    if cfg.family in ("cohere", "cohere2"):
        d |= {"layer_norm_eps": cfg.norm_eps, "logit_scale": cfg.logit_scale, "attention_bias": cfg.o_bias}
        if cfg.family == "cohere":
            d["use_qk_norm"] = cfg.qk_norm
        else:
            d |= {"sliding_window": cfg.sliding_window, "layer_types": _layer_types(cfg)}
    elif cfg.family == "phi":
        d |= {"layer_norm_eps": cfg.norm_eps, "qk_layernorm": cfg.qk_norm}
    else:  # phi3
        d |= {"rms_norm_eps": cfg.norm_eps, "sliding_window": cfg.sliding_window}
    return d


def _check_round_trip(d: dict, cfg: ModelConfig) -> None:
    """The written config must read back (as jlang reads HF configs) to exactly `cfg`."""
    from transformers import CONFIG_MAPPING

    config = CONFIG_MAPPING[d["model_type"]].from_dict(dict(d))
    back = model_config_from_hf(config)
    if back != cfg:
        diffs = [
            f"{k}: {v!r} -> {getattr(back, k)!r}"
            for k, v in cfg.to_dict().items()
            if getattr(back, k) != getattr(cfg, k)
        ]
        raise ExportError("the Hugging Face config does not read back to this model's config: " + "; ".join(diffs))


def hf_tensors(params: Mapping[str, Any], cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """`(HF name, host array in HF layout)` for every tensor, one layer of one parameter at a time.

    Weights come out `[out, in]`, one tensor per layer; the parts of a fused tensor (BLOOM's
    `query_key_value`, Phi-3's `qkv_proj`, `gate_up_proj`) are fused back, layer by layer. Each layer's
    slice of a stacked parameter is brought to the host on its own (`jlang.parallel.to_host`: a
    collective on several processes, so every process must run this generator to the end): host memory
    holds one layer's tensor, never a whole stacked `[L, ...]` parameter.
    """
    names = FAMILIES[cfg.family].names

    def host(name: str, layer: int | None) -> np.ndarray:
        param = params[name]
        part = parallel.to_host(param if layer is None else param[layer])
        return part.T if name in TRANSPOSED else part

    for name in _written_params(cfg):
        layers = range(cfg.num_layers) if name.startswith("layers.") else [None]
        for hf, layer in zip(hf_names(cfg, name), layers):
            if not isinstance(names[name], Part):
                yield hf, host(name, layer)
                continue
            parts = [host(n, layer) for n in fused_parts(cfg, name)]
            if names[name].layout == "blocks":
                yield hf, np.concatenate(parts, axis=0)
            else:  # rows [heads, parts, head_dim]
                split = [p.reshape(cfg.num_heads, cfg.head_dim, *p.shape[1:]) for p in parts]
                yield hf, np.stack(split, axis=1).reshape(-1, *parts[0].shape[1:])


def _written_params(cfg: ModelConfig) -> list[str]:
    """The parameters that start an HF tensor: all but the second and later parts of a fused one."""
    return [n for n in cfg.param_names() if fused_parts(cfg, n)[0] == n]


def hf_layout(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """`(HF name, HF shape)` of every tensor, in the order `hf_tensors` yields them."""
    shapes = param_shapes(cfg)
    out = []
    for name in _written_params(cfg):
        parts = [hf_shape(n, shapes[n]) for n in fused_parts(cfg, name)]
        shape = (sum(p[0] for p in parts), *parts[0][1:])
        out += [(hf, shape) for hf in hf_names(cfg, name)]
    return out


_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def write_safetensors(
    path: Path,
    layout: list[tuple[str, tuple[int, ...]]],
    dtype: str,
    tensors: Iterator[tuple[str, np.ndarray]],
    metadata: Mapping[str, str],
) -> None:
    """Stream tensors into a `.safetensors` file: the header (known from `layout`), then each tensor's bytes.

    The format (huggingface/safetensors): an 8-byte little-endian header length, a JSON header
    `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}` padded with spaces to a
    multiple of 8, then the data. `safetensors.numpy.save_file` needs every tensor in memory at once;
    streaming keeps one.
    """
    itemsize = np.dtype(jnp_dtype(dtype)).itemsize
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, shape in layout:
        size = int(np.prod(shape, dtype=np.int64)) * itemsize
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for (name, shape), (got, arr) in zip(layout, itertools.islice(tensors, len(layout)), strict=True):
            if got != name or tuple(arr.shape) != tuple(shape):
                raise ExportError(f"internal: tensor {got} {arr.shape} where {name} {shape} was announced")
            f.write(np.ascontiguousarray(arr, dtype=jnp_dtype(dtype)).reshape(-1).view(np.uint8).data)


DEFAULT_MAX_SHARD_SIZE = "5GB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: str | int) -> int:
    """Bytes of `"5GB"` (10^9, as transformers), `"500MiB"` (2^20) or a plain number of bytes."""
    if isinstance(size, int):
        return size
    text = str(size).strip().upper().replace(" ", "")
    digits = text.rstrip("KMGIB")
    unit = text[len(digits) :]
    if not digits or unit not in _UNITS:
        raise ExportError(f"shard size {size!r}: expected a number of bytes or e.g. 5GB, 500MB, 2GiB")
    value = float(digits) * _UNITS[unit]
    if value < 1:
        raise ExportError(f"shard size {size!r} must be at least one byte")
    return int(value)


def shard_plan(
    layout: list[tuple[str, tuple[int, ...]]], dtype: str, max_shard_size: str | int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    """`layout` cut, in order, into files of at most `max_shard_size` bytes (a larger tensor gets a file alone)."""
    limit, itemsize = parse_size(max_shard_size), np.dtype(jnp_dtype(dtype)).itemsize
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in layout:
        nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """transformers' file names: `model.safetensors`, or `model-00001-of-00003.safetensors`, ..."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def index_json(plan: list[list[tuple[str, tuple[int, ...]]]], dtype: str) -> dict[str, Any]:
    """`model.safetensors.index.json`: the total size and which file holds each tensor."""
    itemsize = np.dtype(jnp_dtype(dtype)).itemsize
    total = sum(int(np.prod(shape, dtype=np.int64)) * itemsize for shard in plan for _, shape in shard)
    files = shard_names(len(plan))
    weight_map = {name: file for file, shard in zip(files, plan) for name, _ in shard}
    return {"metadata": {"total_size": total}, "weight_map": weight_map}


def jnp_dtype(name: str):
    """The NumPy dtype of a jlang dtype name ("bfloat16" is ml_dtypes', as JAX's)."""
    return jnp.dtype(name)


def save_hf(model, path: str | os.PathLike, *, max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write `model` (a `jlang.Model`) as a Hugging Face directory at `path` (replaced atomically).

    Weights go into safetensors files of at most `max_shard_size` (with `model.safetensors.index.json`
    when there are several), as `save_pretrained` writes them. Call on every process: each layer of
    each parameter is gathered to the host in turn (one layer's tensor at a time, never a whole stacked
    parameter); process 0 writes.
    """
    cfg = model.config
    d = hf_config_dict(cfg, source_config=model.hf_config, tokenizer=model.tokenizer, dtype=model.dtype)
    plan = shard_plan(hf_layout(cfg), model.dtype, max_shard_size)
    tensors = hf_tensors(model.params, cfg)
    path = Path(path)
    if distributed.is_primary():
        with atomic_directory(path) as tmp:
            for file, layout in zip(shard_names(len(plan)), plan):
                write_safetensors(tmp / file, layout, model.dtype, tensors, {"format": "pt"})
            if len(plan) > 1:
                index = json.dumps(index_json(plan, model.dtype), indent=2) + "\n"
                (tmp / "model.safetensors.index.json").write_text(index)
            (tmp / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
            if model.tokenizer is not None:
                model.tokenizer.save_pretrained(tmp)
    else:
        for _ in tensors:  # the gathers are collective: take part in every one
            pass
    distributed.barrier("jlang-export-hf")
    return path
