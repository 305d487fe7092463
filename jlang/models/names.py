"""Name maps: jlang parameter names -> the Hugging Face tensors each family stores them in.

A name map value is either a tensor name (`{i}` stands for the layer) or a `Part`
of a fused tensor: BLOOM's `query_key_value` and Phi-3's `qkv_proj` and
`gate_up_proj` hold several jlang parameters in one tensor, split along its first
(output) axis. `jlang.models.convert` reads each part by region (never more than
one layer's fused tensor at a time) and `jlang.models.export` fuses them back.

Checkpoints of one architecture do not all use the same prefixes (BLOOM's Hub
checkpoints were saved from `BloomModel`, without `transformer.`; Gemma 3's
multimodal checkpoints nest the text model under `model.language_model.` in
transformers 5 and under `language_model.model.` before): a family lists
alternative prefix renamings (`Family.aliases`), and the loader uses the one the
checkpoint matches.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Part:
    """Part `index` of the fused HF tensor `tensor`, along its first (output) axis.

    `layout` "blocks": the parts are contiguous blocks in order (Phi-3's q|k|v, gate|up);
    "heads": the rows are `[heads, parts, head_dim]` (BLOOM's `query_key_value`).
    """

    tensor: str
    index: int
    layout: str = "blocks"


NameMap = dict[str, "str | Part"]

LLAMA_NAMES: NameMap = {
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
SANDWICH_NAMES: NameMap = {
    **LLAMA_NAMES,
    "layers.attn_post_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.mlp_norm": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "layers.mlp_post_norm": "model.layers.{i}.post_feedforward_layernorm.weight",
}

# Cohere 1/2: Llama's names; one norm per layer (parallel attention and MLP), per-head q/k norms.
COHERE_NAMES: NameMap = {
    **{k: v for k, v in LLAMA_NAMES.items() if k not in ("layers.mlp_norm", "layers.q_norm", "layers.k_norm")},
    "layers.q_head_norm": "model.layers.{i}.self_attn.q_norm.weight",
    "layers.k_head_norm": "model.layers.{i}.self_attn.k_norm.weight",
}

_BH = "transformer.h.{i}."
_QKV = _BH + "self_attention.query_key_value."
BLOOM_NAMES: NameMap = {
    "embed": "transformer.word_embeddings.weight",
    "embed_norm": "transformer.word_embeddings_layernorm.weight",
    "embed_norm_bias": "transformer.word_embeddings_layernorm.bias",
    "final_norm": "transformer.ln_f.weight",
    "final_norm_bias": "transformer.ln_f.bias",
    "lm_head": "lm_head.weight",
    "layers.attn_norm": _BH + "input_layernorm.weight",
    "layers.attn_norm_bias": _BH + "input_layernorm.bias",
    **{f"layers.{x}": Part(_QKV + "weight", j, "heads") for j, x in enumerate("qkv")},
    **{f"layers.{x}_bias": Part(_QKV + "bias", j, "heads") for j, x in enumerate("qkv")},
    "layers.o": _BH + "self_attention.dense.weight",
    "layers.o_bias": _BH + "self_attention.dense.bias",
    "layers.mlp_norm": _BH + "post_attention_layernorm.weight",
    "layers.mlp_norm_bias": _BH + "post_attention_layernorm.bias",
    "layers.up": _BH + "mlp.dense_h_to_4h.weight",
    "layers.up_bias": _BH + "mlp.dense_h_to_4h.bias",
    "layers.down": _BH + "mlp.dense_4h_to_h.weight",
    "layers.down_bias": _BH + "mlp.dense_4h_to_h.bias",
}

_OD = "model.decoder."
_OL = _OD + "layers.{i}."
OPT_NAMES: NameMap = {
    "embed": _OD + "embed_tokens.weight",
    "positions": _OD + "embed_positions.weight",
    "project_in": _OD + "project_in.weight",
    "project_out": _OD + "project_out.weight",
    "final_norm": _OD + "final_layer_norm.weight",
    "final_norm_bias": _OD + "final_layer_norm.bias",
    "lm_head": "lm_head.weight",
    "layers.attn_norm": _OL + "self_attn_layer_norm.weight",
    "layers.attn_norm_bias": _OL + "self_attn_layer_norm.bias",
    **{f"layers.{x}": _OL + f"self_attn.{x}_proj.weight" for x in "qkv"},
    **{f"layers.{x}_bias": _OL + f"self_attn.{x}_proj.bias" for x in "qkv"},
    "layers.o": _OL + "self_attn.out_proj.weight",
    "layers.o_bias": _OL + "self_attn.out_proj.bias",
    "layers.mlp_norm": _OL + "final_layer_norm.weight",
    "layers.mlp_norm_bias": _OL + "final_layer_norm.bias",
    "layers.up": _OL + "fc1.weight",
    "layers.up_bias": _OL + "fc1.bias",
    "layers.down": _OL + "fc2.weight",
    "layers.down_bias": _OL + "fc2.bias",
}

_PL = "model.layers.{i}."
PHI_NAMES: NameMap = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.final_layernorm.weight",
    "final_norm_bias": "model.final_layernorm.bias",
    "lm_head": "lm_head.weight",
    "lm_head_bias": "lm_head.bias",
    "layers.attn_norm": _PL + "input_layernorm.weight",
    "layers.attn_norm_bias": _PL + "input_layernorm.bias",
    **{f"layers.{x}": _PL + f"self_attn.{x}_proj.weight" for x in "qkv"},
    **{f"layers.{x}_bias": _PL + f"self_attn.{x}_proj.bias" for x in "qkv"},
    "layers.o": _PL + "self_attn.dense.weight",
    "layers.o_bias": _PL + "self_attn.dense.bias",
    "layers.q_norm": _PL + "self_attn.q_layernorm.weight",
    "layers.q_norm_bias": _PL + "self_attn.q_layernorm.bias",
    "layers.k_norm": _PL + "self_attn.k_layernorm.weight",
    "layers.k_norm_bias": _PL + "self_attn.k_layernorm.bias",
    "layers.up": _PL + "mlp.fc1.weight",
    "layers.up_bias": _PL + "mlp.fc1.bias",
    "layers.down": _PL + "mlp.fc2.weight",
    "layers.down_bias": _PL + "mlp.fc2.bias",
}

PHI3_NAMES: NameMap = {
    **LLAMA_NAMES,
    **{f"layers.{x}": Part(_PL + "self_attn.qkv_proj.weight", j) for j, x in enumerate("qkv")},
    "layers.gate": Part(_PL + "mlp.gate_up_proj.weight", 0),
    "layers.up": Part(_PL + "mlp.gate_up_proj.weight", 1),
}

# Alternative prefixes: (jlang-canonical prefix, prefix in the checkpoint) renamings, tried in order;
# within one alternative the first rule whose prefix matches a name applies.
Aliases = tuple[tuple[tuple[str, str], ...], ...]
BLOOM_ALIASES: Aliases = ((("lm_head.", "lm_head."), ("transformer.", "")),)  # saved from BloomModel
OPT_ALIASES: Aliases = ((("model.decoder.", "decoder."),),)
GEMMA3_ALIASES: Aliases = (
    (("model.", "model.language_model."),),  # Gemma3ForConditionalGeneration, transformers 5
    (("model.", "language_model.model."), ("lm_head.", "language_model.lm_head.")),  # older checkpoints
)
# The vision tower and projector of Gemma 3's multimodal checkpoints: not loaded.
GEMMA3_IGNORED = r"^(model\.)?(vision_tower|multi_modal_projector)\."
