"""Family descriptions: how one decoder becomes Llama, Mistral, Qwen or Gemma.

Every supported checkpoint is the same pre-norm decoder; families differ in a
handful of switches (penzai's `LlamalikeTransformerConfig` has the same shape).
A `Family` holds the switches that are fixed for the family and the map from
jlang's parameter names to Hugging Face tensor names; `ModelConfig` holds the
numbers read from one checkpoint's `config.json`. Adding a family means adding
one `Family(...)` entry to `FAMILIES`, not a model file.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# jlang parameter name -> Hugging Face tensor name. Per-layer names hold `{i}`.
NameMap = dict[str, str]

_LLAMA_NAMES: NameMap = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
    "layers.attn_norm": "model.layers.{i}.input_layernorm.weight",
    "layers.q": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.k": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.v": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.o": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.q_bias": "model.layers.{i}.self_attn.q_proj.bias",
    "layers.k_bias": "model.layers.{i}.self_attn.k_proj.bias",
    "layers.v_bias": "model.layers.{i}.self_attn.v_proj.bias",
    "layers.o_bias": "model.layers.{i}.self_attn.o_proj.bias",
    "layers.q_norm": "model.layers.{i}.self_attn.q_norm.weight",
    "layers.k_norm": "model.layers.{i}.self_attn.k_norm.weight",
    "layers.mlp_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.gate": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.up": "model.layers.{i}.mlp.up_proj.weight",
    "layers.down": "model.layers.{i}.mlp.down_proj.weight",
}

# Gemma 2/3 "sandwich" norms: HF's `post_attention_layernorm` is the norm *after*
# attention there, while in Llama it is the norm *before* the MLP.
_SANDWICH_NAMES: NameMap = {
    **_LLAMA_NAMES,
    "layers.attn_post_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.mlp_norm": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "layers.mlp_post_norm": "model.layers.{i}.post_feedforward_layernorm.weight",
}


@dataclasses.dataclass(frozen=True)
class Family:
    """What is fixed for a family of checkpoints.

    Attributes:
      name: jlang's name for the family (`Model.family`).
      architectures: the `architectures` values of HF configs that map here.
      names: jlang parameter name -> HF tensor name.
      norm_offset: RMSNorm scales by `norm_offset + w` (Gemma stores `w` around 0, so 1.0).
      norm_cast_before_weight: Llama casts the normalised activations to the
        compute dtype before multiplying by `w`; Gemma multiplies in float32 first.
      embed_scale: multiply embeddings by sqrt(d_model) (Gemma).
      qk_norm: RMSNorm over head_dim on queries and keys before RoPE (Qwen3, Gemma 3).
      sandwich_norms: extra norms after attention and after the MLP (Gemma 2/3).
      qkv_bias: biases on the q/k/v projections regardless of config (Qwen2).
    """

    name: str
    architectures: tuple[str, ...]
    names: NameMap = dataclasses.field(default_factory=lambda: dict(_LLAMA_NAMES))
    norm_offset: float = 0.0
    norm_cast_before_weight: bool = True
    embed_scale: bool = False
    qk_norm: bool = False
    sandwich_norms: bool = False
    qkv_bias: bool = False


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("llama", ("LlamaForCausalLM",)),
        Family("mistral", ("MistralForCausalLM",)),
        Family("qwen2", ("Qwen2ForCausalLM",), qkv_bias=True),
        Family("qwen3", ("Qwen3ForCausalLM",), qk_norm=True),
        Family("gemma", ("GemmaForCausalLM",), norm_offset=1.0, norm_cast_before_weight=False, embed_scale=True),
        Family(
            "gemma2",
            ("Gemma2ForCausalLM",),
            names=dict(_SANDWICH_NAMES),
            norm_offset=1.0,
            norm_cast_before_weight=False,
            embed_scale=True,
            sandwich_norms=True,
        ),
        Family(
            "gemma3",
            ("Gemma3ForCausalLM",),
            names=dict(_SANDWICH_NAMES),
            norm_offset=1.0,
            norm_cast_before_weight=False,
            embed_scale=True,
            qk_norm=True,
            sandwich_norms=True,
        ),
    ]
}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or one of its options is not supported."""


def supported_architectures() -> list[str]:
    return sorted(a for f in FAMILIES.values() for a in f.architectures)


def family_for_config(hf_config: Any) -> Family:
    """The family of a `transformers` config, from its `architectures` (or `model_type`)."""
    architectures = list(getattr(hf_config, "architectures", None) or [])
    for arch in architectures:
        for family in FAMILIES.values():
            if arch in family.architectures:
                return family
    if not architectures and getattr(hf_config, "model_type", None) in FAMILIES:
        return FAMILIES[hf_config.model_type]
    raise UnsupportedModelError(
        f"unsupported architecture {architectures or getattr(hf_config, 'model_type', None)!r}; "
        f"jlang supports: {', '.join(supported_architectures())}"
    )


@dataclasses.dataclass(frozen=True)
class RoPE:
    """Rotary embedding of one attention type: base, and the HF `rope_type` scaling."""

    theta: float
    kind: str = "default"  # "default" | "linear" | "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The numbers of one checkpoint, read from its HF config.

    `local_layers[l]` is True where layer `l` uses sliding-window attention with
    `rope_local`; other layers attend globally with `rope_global`.
    """

    family: str
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    activation: str  # "silu" | "gelu_tanh" | "gelu"
    norm_eps: float
    rope_global: RoPE
    rope_local: RoPE
    local_layers: tuple[bool, ...]
    sliding_window: int | None
    attn_scale: float
    attn_softcap: float | None
    final_softcap: float | None
    tie_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    norm_offset: float
    norm_cast_before_weight: bool
    embed_scale: bool
    qk_norm: bool
    sandwich_norms: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["rope_global"] = RoPE(**d["rope_global"])
        d["rope_local"] = RoPE(**d["rope_local"])
        d["local_layers"] = tuple(d["local_layers"])
        return cls(**d)

    def param_names(self) -> list[str]:
        """The jlang parameters this config has (a subset of the family's name map)."""
        names = ["embed", "final_norm", "layers.attn_norm", "layers.q", "layers.k", "layers.v", "layers.o"]
        names += ["layers.mlp_norm", "layers.gate", "layers.up", "layers.down"]
        if not self.tie_embeddings:
            names.append("lm_head")
        if self.qkv_bias:
            names += ["layers.q_bias", "layers.k_bias", "layers.v_bias"]
        if self.o_bias:
            names.append("layers.o_bias")
        if self.qk_norm:
            names += ["layers.q_norm", "layers.k_norm"]
        if self.sandwich_norms:
            names += ["layers.attn_post_norm", "layers.mlp_post_norm"]
        return names


_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
}


def _rope_from_params(params: dict, where: str) -> RoPE:
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in ("default", "linear", "llama3"):
        raise UnsupportedModelError(f"unsupported rope_type {kind!r} ({where}); jlang supports default, linear, llama3")
    fields = {f.name for f in dataclasses.fields(RoPE)} - {"theta", "kind"}
    return RoPE(theta=float(params["rope_theta"]), kind=kind, **{k: params[k] for k in fields if k in params})


def _rope_params(hf_config: Any) -> tuple[RoPE, RoPE]:
    """(global, local) RoPE from either config layout.

    transformers 5 keeps `rope_parameters` (per layer type for Gemma 3); older
    configs on disk carry `rope_theta`, `rope_scaling` and Gemma 3's `rope_local_base_freq`.
    """
    params = getattr(hf_config, "rope_parameters", None)
    if params and "full_attention" in params:
        glob = _rope_from_params(params["full_attention"], "full_attention")
        local = _rope_from_params(params.get("sliding_attention", params["full_attention"]), "sliding_attention")
        return glob, local
    if params and "rope_theta" in params:
        glob = _rope_from_params(params, "rope_parameters")
    else:
        scaling = dict(getattr(hf_config, "rope_scaling", None) or {})
        glob = _rope_from_params({"rope_theta": getattr(hf_config, "rope_theta", 10000.0), **scaling}, "rope_scaling")
    local_theta = getattr(hf_config, "rope_local_base_freq", None)
    local = RoPE(theta=float(local_theta)) if local_theta else glob
    return glob, local


def _local_layers(hf_config: Any, num_layers: int) -> tuple[tuple[bool, ...], int | None]:
    window = getattr(hf_config, "sliding_window", None)
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is not None:
        if len(layer_types) != num_layers:
            raise UnsupportedModelError(f"layer_types has {len(layer_types)} entries for {num_layers} layers")
        unknown = set(layer_types) - {"full_attention", "sliding_attention"}
        if unknown:
            raise UnsupportedModelError(f"unsupported layer_types {sorted(unknown)}")
        local = tuple(t == "sliding_attention" for t in layer_types)
    elif window is not None and getattr(hf_config, "use_sliding_window", True) is not False:
        local = (True,) * num_layers  # Mistral: every layer uses the window
    else:
        local = (False,) * num_layers
    if any(local) and not window:
        raise UnsupportedModelError("sliding-window layers without a sliding_window size")
    return local, (int(window) if any(local) else None)


def model_config_from_hf(hf_config: Any) -> ModelConfig:
    """Read one checkpoint's numbers from its `transformers` config."""
    family = family_for_config(hf_config)
    c = hf_config
    num_heads = int(c.num_attention_heads)
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // num_heads)
    act_name = getattr(c, "hidden_activation", None) or getattr(c, "hidden_act", None) or "silu"
    if act_name not in _ACTIVATIONS:
        raise UnsupportedModelError(f"unsupported activation {act_name!r}; supported: {sorted(_ACTIVATIONS)}")
    rope_global, rope_local = _rope_params(c)
    local_layers, window = _local_layers(c, int(c.num_hidden_layers))
    scalar = getattr(c, "query_pre_attn_scalar", None)
    return ModelConfig(
        family=family.name,
        vocab_size=int(c.vocab_size),
        d_model=int(c.hidden_size),
        num_layers=int(c.num_hidden_layers),
        num_heads=num_heads,
        num_kv_heads=int(getattr(c, "num_key_value_heads", None) or num_heads),
        head_dim=head_dim,
        d_ff=int(c.intermediate_size),
        activation=_ACTIVATIONS[act_name],
        norm_eps=float(c.rms_norm_eps),
        rope_global=rope_global,
        rope_local=rope_local,
        local_layers=local_layers,
        sliding_window=window,
        attn_scale=1.0 / math.sqrt(float(scalar) if scalar else head_dim),
        attn_softcap=getattr(c, "attn_logit_softcapping", None),
        final_softcap=getattr(c, "final_logit_softcapping", None),
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        qkv_bias=family.qkv_bias or bool(getattr(c, "attention_bias", False)),
        # Llama-style `attention_bias` puts a bias on o_proj too; Qwen2's fixed biases are q/k/v only.
        o_bias=bool(getattr(c, "attention_bias", False)),
        norm_offset=family.norm_offset,
        norm_cast_before_weight=family.norm_cast_before_weight,
        embed_scale=family.embed_scale,
        qk_norm=family.qk_norm,
        sandwich_norms=family.sandwich_norms,
    )
