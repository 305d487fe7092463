"""Tiny random checkpoints of the families added after Llama/Gemma: Cohere 1/2, BLOOM, OPT, Phi, Phi-3 and
Gemma 3's multimodal wrapper, written with transformers' own classes and `save_pretrained`.

As in `tiny_models`: odd sizes, grouped-query attention where the family has it, norm weights and
biases away from 1 and 0, windows shorter than the test sequences; plus the variants each family's
switches need (OPT post-LN with `word_embed_proj_dim`, BLOOM with 5 heads for ALiBi's
non-power-of-two slopes and with `apply_residual_connection_post_layernorm`, Cohere's q/k norms,
Phi's partial rotary and q/k LayerNorms).
"""

from __future__ import annotations

from pathlib import Path

from tiny_models import tiny_tokenizer

VOCAB = 101
TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


def new_family_configs() -> dict:
    """name -> transformers config."""
    from transformers import (
        BloomConfig,
        Cohere2Config,
        CohereConfig,
        Gemma3Config,
        Gemma3TextConfig,
        OPTConfig,
        Phi3Config,
        PhiConfig,
        SiglipVisionConfig,
    )

    llama_like = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=72, num_hidden_layers=2, **TOKENS)
    gqa = dict(num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    text = Gemma3TextConfig(
        **llama_like,
        **gqa,
        head_dim=16,
        sliding_window=4,
        query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention"],
    )
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    return {
        "cohere": CohereConfig(**llama_like, **gqa, use_qk_norm=True, logit_scale=0.5, tie_word_embeddings=True),
        "cohere2": Cohere2Config(
            **{**llama_like, "num_hidden_layers": 4},
            **gqa,
            sliding_window=4,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            logit_scale=0.7,
        ),
        "bloom": BloomConfig(vocab_size=VOCAB, hidden_size=40, n_layer=2, n_head=5, **TOKENS),
        "bloom_resid": BloomConfig(
            vocab_size=VOCAB,
            hidden_size=48,
            n_layer=2,
            n_head=6,
            apply_residual_connection_post_layernorm=True,
            **TOKENS,
        ),
        "opt": OPTConfig(
            vocab_size=VOCAB,
            hidden_size=48,
            ffn_dim=72,
            num_hidden_layers=2,
            num_attention_heads=6,
            max_position_embeddings=64,
            word_embed_proj_dim=48,
            **TOKENS,
        ),
        "opt_postln": OPTConfig(
            vocab_size=VOCAB,
            hidden_size=48,
            ffn_dim=72,
            num_hidden_layers=2,
            num_attention_heads=6,
            max_position_embeddings=64,
            do_layer_norm_before=False,
            word_embed_proj_dim=32,
            **TOKENS,
        ),
        "phi": PhiConfig(
            **llama_like,
            **gqa,
            partial_rotary_factor=0.5,
            qk_layernorm=True,
            hidden_act="gelu_new",
            tie_word_embeddings=False,
        ),
        "phi3": Phi3Config(**llama_like, **gqa, tie_word_embeddings=False),
        "gemma3_mm": Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=100),
    }


def build_new_torch_model(config, seed: int = 0):
    """A random transformers model (eager attention, float32) with norms and biases away from 1 and 0."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration

    torch.manual_seed(seed)
    if config.model_type == "gemma3":
        model = Gemma3ForConditionalGeneration._from_config(config, attn_implementation="eager", dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    gemma_like = config.model_type.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_f" in name:
                p.copy_(
                    (0.0 if gemma_like and "weight" in name else 1.0 if "weight" in name else 0.0)
                    + 0.3 * torch.randn_like(p)
                )
            elif "bias" in name:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model.eval()


def save_new_tiny(config, path: Path, seed: int = 0):
    """Write a tiny random checkpoint + tokenizer to `path`; return the torch model."""
    model = build_new_torch_model(config, seed)
    model.save_pretrained(path)
    tiny_tokenizer(VOCAB).save_pretrained(path)
    return model
