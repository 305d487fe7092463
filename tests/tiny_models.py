"""Tiny random Hugging Face checkpoints of every supported family, written with `save_pretrained`.

Sizes are odd on purpose (vocab, intermediate), attention is grouped-query,
norm weights are random rather than ones, and sequences in the tests are longer
than the sliding windows, so that a wrong axis, a missing offset or a window
off by one changes the logits.
"""

from __future__ import annotations

from pathlib import Path

VOCAB = 131


def _common(**kw):
    base = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=83,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    base.update(kw)
    return base


def family_configs() -> dict:
    """name -> transformers config, one per family variant that parity must cover."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GemmaConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
        Qwen3Config,
    )

    return {
        "llama2": LlamaConfig(**_common(tie_word_embeddings=False)),
        "llama3": LlamaConfig(
            **_common(tie_word_embeddings=False),
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
        "mistral": MistralConfig(**_common(tie_word_embeddings=False, sliding_window=5)),
        "qwen2": Qwen2Config(**_common(tie_word_embeddings=True)),
        "qwen3": Qwen3Config(**_common(tie_word_embeddings=False, head_dim=16)),
        "gemma": GemmaConfig(**_common(head_dim=16, hidden_act="gelu_pytorch_tanh")),
        "gemma2": Gemma2Config(
            **_common(head_dim=16, sliding_window=4, query_pre_attn_scalar=24, num_hidden_layers=4),
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
        "gemma3": Gemma3TextConfig(
            **_common(head_dim=16, sliding_window=4, query_pre_attn_scalar=24, num_hidden_layers=4),
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        ),
    }


def tiny_tokenizer(vocab_size: int = VOCAB):
    """A word-level fast tokenizer over made-up words, so no download is needed."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def build_torch_model(config, seed: int = 0):
    """A random transformers model with non-trivial norms (eager attention, float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    gemma_like = config.model_type.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((0.0 if gemma_like else 1.0) + 0.3 * torch.randn_like(p))
            elif "bias" in name:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model.eval()


def save_tiny(config, path: Path, seed: int = 0):
    """Write a tiny random checkpoint + tokenizer to `path`; return the torch model."""
    model = build_torch_model(config, seed)
    model.save_pretrained(path)
    tiny_tokenizer(config.vocab_size).save_pretrained(path)
    return model
