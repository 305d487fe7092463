"""Family descriptions: how one decoder becomes Llama, Mistral, Qwen, Gemma, Cohere, BLOOM, OPT or Phi.

Every supported checkpoint is the same decoder; families differ in a handful of
switches (penzai's `LlamalikeTransformerConfig` has the same shape). A `Family`
holds the switches that are fixed for the family and the map from jlang's
parameter names to Hugging Face tensor names (`jlang.models.names`); `ModelConfig`
holds the numbers read from one checkpoint's `config.json`. Adding a family means
adding one `Family(...)` entry to `FAMILIES`, not a model file.

Families and what differs from Llama:

* llama, mistral (sliding window), qwen2 (q/k/v biases), qwen3 (q/k RMSNorm);
* gemma, gemma2, gemma3: `1 + w` norms, scaled embeddings, sandwich norms, soft-caps, local layers;
  gemma3 also reads `Gemma3ForConditionalGeneration` (12B/27B): its text model from `text_config`, no vision tower;
* cohere, cohere2: LayerNorm without bias, parallel attention + MLP, interleaved RoPE, per-head
  q/k norms, `logit_scale`; Cohere2: sliding-window layers, global layers without RoPE;
* bloom: ALiBi, LayerNorm with bias (also after the embedding), fused head-interleaved
  `query_key_value`, plain GELU MLP with biases;
* opt: learned positions (offset 2), LayerNorm with bias, plain ReLU MLP, post-norm variant
  (`do_layer_norm_before=False`), `project_in`/`project_out` (`word_embed_proj_dim`);
* phi: parallel attention + MLP off one LayerNorm, partial rotary, plain `gelu_new` MLP, biases,
  `lm_head` bias, optional q/k LayerNorm; phi3: Llama with fused `qkv_proj` and `gate_up_proj`.

The neurons (`mlp.act`) are `act(W_gate x)` for gated MLPs and `act(W_in x + b)` for
plain ones (BLOOM, OPT, Phi): the tensor LAPE hooks in each.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jlang.models.names import (
    BLOOM_ALIASES,
    BLOOM_NAMES,
    COHERE_NAMES,
    GEMMA3_ALIASES,
    GEMMA3_IGNORED,
    LLAMA_NAMES,
    OPT_ALIASES,
    OPT_NAMES,
    PHI3_NAMES,
    PHI_NAMES,
    SANDWICH_NAMES,
    Aliases,
    NameMap,
)


@dataclasses.dataclass(frozen=True)
class Family:
    """What is fixed for a family of checkpoints.

    Attributes:
      name: jlang's name for the family (`Model.family`).
      architectures: the `architectures` values of HF configs that map here.
      names: jlang parameter name -> HF tensor name (or `Part` of a fused one; `jlang.models.names`).
      norm_offset: RMSNorm scales by `norm_offset + w` (Gemma stores `w` around 0, so 1.0).
      norm_cast_before_weight: Llama casts the normalised activations to the
        compute dtype before multiplying by `w`; Gemma multiplies in float32 first.
      embed_scale: multiply embeddings by sqrt(d_model) (Gemma).
      qk_norm: a norm over head_dim on queries and keys before RoPE (Qwen3, Gemma 3, Cohere, Phi).
      sandwich_norms: extra norms after attention and after the MLP (Gemma 2/3).
      qkv_bias: biases on the q/k/v projections regardless of config (Qwen2).
      norm_kind: "rms" (RMSNorm) or "layer" (mean-centred LayerNorm: Cohere, BLOOM, OPT, Phi).
      norm_bias: LayerNorms carry a bias (BLOOM, OPT, Phi; Cohere's have none).
      parallel_residual: attention and MLP read one norm's output and both add to the residual (Cohere, Phi).
      positions: "rope", "alibi" (BLOOM) or "learned" (OPT's table, offset 2).
      rope_interleaved: RoPE rotates pairs `(2i, 2i+1)` (Cohere), not the two halves.
      gated_mlp: `down(act(gate x) * up x)`; else `down(act(up x + b))` (BLOOM, OPT, Phi).
      embed_norm: a norm right after the embedding (BLOOM's `word_embeddings_layernorm`).
      qk_norm_per_head: the q/k norm has one weight per head, `[heads, head_dim]` (Cohere).
      text_config: the checkpoint is multimodal; its text model is read from `config.text_config`.
      aliases: alternative tensor prefixes checkpoints of this family use (`jlang.models.names`).
      ignored: regex of checkpoint tensors that are not loaded (a vision tower).
    """

    name: str
    architectures: tuple[str, ...]
    names: NameMap = dataclasses.field(default_factory=lambda: dict(LLAMA_NAMES))
    norm_offset: float = 0.0
    norm_cast_before_weight: bool = True
    embed_scale: bool = False
    qk_norm: bool = False
    sandwich_norms: bool = False
    qkv_bias: bool = False
    norm_kind: str = "rms"
    norm_bias: bool = False
    parallel_residual: bool = False
    positions: str = "rope"
    rope_interleaved: bool = False
    gated_mlp: bool = True
    embed_norm: bool = False
    qk_norm_per_head: bool = False
    text_config: bool = False
    aliases: Aliases = ()
    ignored: str | None = None


_GEMMA3 = dict(
    names=dict(SANDWICH_NAMES),
    norm_offset=1.0,
    norm_cast_before_weight=False,
    embed_scale=True,
    qk_norm=True,
    sandwich_norms=True,
)
_COHERE = dict(
    names=dict(COHERE_NAMES),
    norm_kind="layer",
    norm_cast_before_weight=False,
    parallel_residual=True,
    rope_interleaved=True,
    qk_norm_per_head=True,
)
_LAYERNORM = dict(norm_kind="layer", norm_bias=True, norm_cast_before_weight=False, gated_mlp=False)

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
            names=dict(SANDWICH_NAMES),
            norm_offset=1.0,
            norm_cast_before_weight=False,
            embed_scale=True,
            sandwich_norms=True,
        ),
        # Gemma 3's multimodal checkpoints (12B, 27B) hold the same text decoder: read from `text_config`,
        # their weights under the language-model prefixes, the vision tower not loaded.
        Family(
            "gemma3",
            ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"),
            **_GEMMA3,
            text_config=True,
            aliases=GEMMA3_ALIASES,
            ignored=GEMMA3_IGNORED,
        ),
        Family("cohere", ("CohereForCausalLM",), **_COHERE),
        Family("cohere2", ("Cohere2ForCausalLM",), **_COHERE),
        Family(
            "bloom",
            ("BloomForCausalLM",),
            names=dict(BLOOM_NAMES),
            **_LAYERNORM,
            positions="alibi",
            embed_norm=True,
            aliases=BLOOM_ALIASES,
        ),
        Family(
            "opt", ("OPTForCausalLM",), names=dict(OPT_NAMES), **_LAYERNORM, positions="learned", aliases=OPT_ALIASES
        ),
        Family("phi", ("PhiForCausalLM",), names=dict(PHI_NAMES), **_LAYERNORM, parallel_residual=True),
        Family("phi3", ("Phi3ForCausalLM",), names=dict(PHI3_NAMES)),
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
    # Added for Cohere, BLOOM, OPT and Phi; the defaults are the decoder as it was before them,
    # so configs saved without these fields still load (`from_dict`).
    norm_kind: str = "rms"  # "rms" | "layer" (mean-centred)
    norm_bias: bool = False
    parallel_residual: bool = False  # attention and MLP off one norm (Cohere, Phi)
    post_norm: bool = False  # norms after each residual add instead of before each block (OPT-350m)
    residual_from_norm: bool = False  # BLOOM's apply_residual_connection_post_layernorm
    positions: str = "rope"  # "rope" | "alibi" | "learned"
    rope_dims: int | None = None  # partial rotary: only the first rope_dims of head_dim rotate (Phi)
    rope_interleaved: bool = False  # pairs (2i, 2i+1) rotate (Cohere), not halves
    rope_on_global: bool = True  # False: global layers use no RoPE (Cohere2)
    num_positions: int = 0  # rows of the learned position table (OPT: max positions + offset)
    position_offset: int = 0  # learned table row of position p is p + offset (OPT: 2)
    gated_mlp: bool = True  # down(act(gate x) * up x); else down(act(up x + b))
    mlp_bias: bool = False
    embed_norm: bool = False  # a norm after the embedding (BLOOM)
    embed_dim: int | None = None  # OPT's word_embed_proj_dim != d_model: project_in / project_out
    has_final_norm: bool = True  # False for OPT-350m (post-LN)
    lm_head_bias: bool = False  # Phi
    logit_scale: float | None = None  # Cohere: logits * logit_scale
    qk_norm_per_head: bool = False  # Cohere: q/k norm weights `[heads, head_dim]`

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
        nb = self.norm_bias
        names = ["embed"]
        names += ["final_norm"] if self.has_final_norm else []
        names += ["layers.attn_norm", "layers.q", "layers.k", "layers.v", "layers.o"]
        if not self.parallel_residual:
            names.append("layers.mlp_norm")
        names += ["layers.gate", "layers.up", "layers.down"] if self.gated_mlp else ["layers.up", "layers.down"]
        if not self.tie_embeddings:
            names.append("lm_head")
        if self.qkv_bias:
            names += ["layers.q_bias", "layers.k_bias", "layers.v_bias"]
        if self.o_bias:
            names.append("layers.o_bias")
        if self.qk_norm:
            names += ["layers.q_head_norm", "layers.k_head_norm"] if self.qk_norm_per_head else []
            names += [] if self.qk_norm_per_head else ["layers.q_norm", "layers.k_norm"]
            names += ["layers.q_norm_bias", "layers.k_norm_bias"] if nb else []
        if self.sandwich_norms:
            names += ["layers.attn_post_norm", "layers.mlp_post_norm"]
        if nb:
            names += ["final_norm_bias"] if self.has_final_norm else []
            names += ["layers.attn_norm_bias"] + ([] if self.parallel_residual else ["layers.mlp_norm_bias"])
        if self.embed_norm:
            names += ["embed_norm"] + (["embed_norm_bias"] if nb else [])
        if self.positions == "learned":
            names.append("positions")
        if self.embed_dim is not None:
            names += ["project_in", "project_out"]
        if self.mlp_bias:
            names += ["layers.up_bias", "layers.down_bias"]
        if self.lm_head_bias:
            names.append("lm_head_bias")
        return names


_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
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


def _first(c: Any, *keys: str, default: Any = None) -> Any:
    """The first of `keys` the config has (families name the same number differently)."""
    for key in keys:
        value = getattr(c, key, None)
        if value is not None:
            return value
    return default


def _family_fields(family: Family, c: Any) -> dict[str, Any]:
    """ModelConfig fields that only some families' configs set (Cohere, BLOOM, OPT, Phi)."""
    d: dict[str, Any] = {}
    if family.name in ("cohere", "cohere2"):
        d["qk_norm"] = bool(getattr(c, "use_qk_norm", False))
        d["logit_scale"] = float(getattr(c, "logit_scale", 1.0))
        d["rope_on_global"] = family.name != "cohere2"  # Cohere2's global layers have no RoPE
    elif family.name == "bloom":
        d["residual_from_norm"] = bool(getattr(c, "apply_residual_connection_post_layernorm", False))
        d["qkv_bias"] = d["o_bias"] = d["mlp_bias"] = True
    elif family.name == "opt":
        if not getattr(c, "layer_norm_elementwise_affine", True):
            raise UnsupportedModelError("OPT with layer_norm_elementwise_affine=False is not supported")
        pre = bool(getattr(c, "do_layer_norm_before", True))
        d["post_norm"] = not pre
        d["has_final_norm"] = pre and not getattr(c, "_remove_final_layer_norm", False)
        d["qkv_bias"] = d["o_bias"] = d["mlp_bias"] = bool(getattr(c, "enable_bias", True))
        d["position_offset"] = 2
        d["num_positions"] = int(c.max_position_embeddings) + 2
        proj = getattr(c, "word_embed_proj_dim", None)
        d["embed_dim"] = int(proj) if proj is not None and int(proj) != int(c.hidden_size) else None
        d["norm_eps"] = 1e-5  # torch.nn.LayerNorm's default: OPT's config has no epsilon
    elif family.name == "phi":
        d["qk_norm"] = bool(getattr(c, "qk_layernorm", False))
        d["qkv_bias"] = d["o_bias"] = d["mlp_bias"] = d["lm_head_bias"] = True
    return d


def _partial_rotary(c: Any, head_dim: int) -> int | None:
    params = getattr(c, "rope_parameters", None) or {}
    factor = params.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", 1.0)) or 1.0
    dims = int(head_dim * float(factor))
    return None if dims == head_dim else dims


def model_config_from_hf(hf_config: Any) -> ModelConfig:
    """Read one checkpoint's numbers from its `transformers` config (a multimodal one's `text_config`)."""
    family = family_for_config(hf_config)
    c = hf_config.get_text_config() if family.text_config else hf_config
    num_heads = int(c.num_attention_heads)
    d_model = int(c.hidden_size)
    head_dim = int(getattr(c, "head_dim", None) or d_model // num_heads)
    default_act = "gelu_tanh" if family.name == "bloom" else "silu"  # BLOOM's own tanh GELU, not configurable
    act_name = _first(c, "hidden_activation", "hidden_act", "activation_function", default=default_act)
    if act_name not in _ACTIVATIONS and act_name != "gelu_tanh":
        raise UnsupportedModelError(f"unsupported activation {act_name!r}; supported: {sorted(_ACTIVATIONS)}")
    if family.positions == "rope":
        rope_global, rope_local = _rope_params(c)
    else:
        rope_global = rope_local = RoPE(theta=10000.0)  # unused
    local_layers, window = _local_layers(c, int(c.num_hidden_layers))
    scalar = getattr(c, "query_pre_attn_scalar", None)
    d_ff = int(_first(c, "intermediate_size", "ffn_dim", default=4 * d_model))
    fields = dict(
        family=family.name,
        vocab_size=int(c.vocab_size),
        d_model=d_model,
        num_layers=int(c.num_hidden_layers),
        num_heads=num_heads,
        num_kv_heads=int(getattr(c, "num_key_value_heads", None) or num_heads),
        head_dim=head_dim,
        d_ff=d_ff,
        activation=_ACTIVATIONS.get(act_name, act_name),
        norm_eps=float(_first(c, "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", default=1e-5)),
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
        norm_kind=family.norm_kind,
        norm_bias=family.norm_bias,
        parallel_residual=family.parallel_residual,
        positions=family.positions,
        rope_dims=_partial_rotary(c, head_dim) if family.positions == "rope" else None,
        rope_interleaved=family.rope_interleaved,
        gated_mlp=family.gated_mlp,
        embed_norm=family.embed_norm,
        qk_norm_per_head=family.qk_norm_per_head,
    )
    fields.update(_family_fields(family, c))
    return ModelConfig(**fields)
