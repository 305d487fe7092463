"""The masks published with LAPE (Tang et al. 2024, RUCAIBox/Language-Specific-Neurons) fit the `[L, d_ff]` of
the models they were found on, as derived from those models' real configs by transformers and `jlang.torch`.

The config values are written here (nothing is downloaded), from each model's `config.json` on the Hub:
- bigscience/bloom-7b1: n_layer 30, hidden_size 4096, n_head 32, vocab_size 250880; BLOOM's MLP is
  `dense_h_to_4h`, so d_ff = 4 * hidden_size = 16384.
- facebook/opt-6.7b: num_hidden_layers 32, hidden_size 4096, ffn_dim 16384, num_attention_heads 32,
  word_embed_proj_dim 4096, vocab_size 50272, max_position_embeddings 2048.
- microsoft/phi-2: num_hidden_layers 32, hidden_size 2560, intermediate_size 10240, num_attention_heads 32,
  partial_rotary_factor 0.4, vocab_size 51200.
- meta-llama/Llama-2-{7b,13b,70b}-hf: 32/40/80 layers, hidden 4096/5120/8192, intermediate 11008/13824/28672,
  heads 32/40/64 (70B: 8 key-value heads); mistralai/Mistral-7B-v0.1: 32 layers, hidden 4096,
  intermediate 14336, 32 heads, 8 key-value heads.
The models are built on the meta device (no weights), so `jlang.torch.mlp_shape` reads the real module tree.
"""

from __future__ import annotations

import pytest
from shared_data import shared_fixtures

from jlang.masks import NeuronMasks
from jlang.models.families import model_config_from_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import jlang.torch as jt  # noqa: E402

LAPE_LANGS = ["en", "zh", "fr", "es", "vi", "id", "ja"]  # the repository README's order


def _configs() -> dict:
    """fixture name -> (transformers config built from the literal config.json values, expected (L, d_ff))."""
    T = transformers
    llama = dict(vocab_size=32000, max_position_embeddings=4096)
    return {
        "BLOOM-7B": (T.BloomConfig(vocab_size=250880, hidden_size=4096, n_layer=30, n_head=32), (30, 16384)),
        "OPT-6.7B": (
            T.OPTConfig(
                vocab_size=50272,
                hidden_size=4096,
                num_hidden_layers=32,
                ffn_dim=16384,
                num_attention_heads=32,
                word_embed_proj_dim=4096,
                max_position_embeddings=2048,
            ),
            (32, 16384),
        ),
        "Phi-2-2.7B": (
            T.PhiConfig(
                vocab_size=51200,
                hidden_size=2560,
                intermediate_size=10240,
                num_hidden_layers=32,
                num_attention_heads=32,
                partial_rotary_factor=0.4,
            ),
            (32, 10240),
        ),
        "LLaMA-2-7B": (
            T.LlamaConfig(
                **llama, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32
            ),
            (32, 11008),
        ),
        "LLaMA-2-13B": (
            T.LlamaConfig(
                **llama, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40
            ),
            (40, 13824),
        ),
        "LLaMA-2-70B": (
            T.LlamaConfig(
                **llama,
                hidden_size=8192,
                intermediate_size=28672,
                num_hidden_layers=80,
                num_attention_heads=64,
                num_key_value_heads=8,
            ),
            (80, 28672),
        ),
        "Mistral-7B": (
            T.MistralConfig(
                vocab_size=32000,
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
            ),
            (32, 14336),
        ),
    }


CONFIGS = _configs()
# per-language counts decoded from the files (methods.md, "Models and published masks"); ja got none in these
COUNTS = {"BLOOM-7B": [445, 653, 680, 918, 551, 2823, 0]}


def _meta_model(config):
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_published_mask_fits_the_models_real_shape(name):
    path = shared_fixtures("lape-published", f"{name}.neuron.pth")
    config, (L, F) = CONFIGS[name]
    model = _meta_model(config)
    assert jt.mlp_shape(model) == (L, F)
    jlang_config = model_config_from_hf(config)  # the [L, d_ff] jlang's decoder derives from the same config
    assert (jlang_config.num_layers, jlang_config.d_ff) == (L, F)
    masks = NeuronMasks.from_lape_pt(path, LAPE_LANGS, num_neurons=F)  # read in place
    masks.check_fits(*jt.mlp_shape(model), model=name)
    assert masks.masks.shape == (len(LAPE_LANGS), L, F)
    assert masks.unique_count() == round(0.01 * L * F)  # LAPE selects exactly 1% of L * d_ff
    inferred = NeuronMasks.from_lape_pt(path, LAPE_LANGS)  # the largest index fits under d_ff
    assert inferred.num_layers == L and inferred.num_neurons <= F
    if name in COUNTS:
        assert masks.counts().sum(1).tolist() == COUNTS[name]
    if name in ("BLOOM-7B", "OPT-6.7B", "Phi-2-2.7B"):  # six lists in the file: ja got no neuron
        assert masks.meta["missing_languages"] == ["ja"] and not masks["ja"].any()
        assert masks.masks[:, -4:].sum() / masks.masks.sum() > 0.4  # top-heavy, as methods.md notes


@pytest.mark.parametrize("name", ["BLOOM-7B", "OPT-6.7B", "Phi-2-2.7B"])
def test_bridge_takes_the_published_file(name):
    """`jlang.torch.apply(model, "X.neuron.pth", lang=..., languages=...)` hooks the layers holding that
    language's neurons, on the module of the family's layout (meta model: hooks only, no forward)."""
    path = shared_fixtures("lape-published", f"{name}.neuron.pth")
    config, (L, F) = CONFIGS[name]
    model = _meta_model(config)
    layout = jt.mlp_layout(model)
    masks = NeuronMasks.from_lape_pt(path, LAPE_LANGS, num_neurons=F)
    with jt.apply(model, path, lang="zh", languages=LAPE_LANGS) as handle:
        assert handle.layers == [l for l in range(L) if masks["zh"][l].any()]
        layers = jt.decoder_layers(model)
        hooked = [l for l, layer in enumerate(layers) if _module(layer, layout.act)._forward_hooks]
        assert hooked == handle.layers
    assert not any(_module(layer, layout.act)._forward_hooks for layer in jt.decoder_layers(model))


def _module(layer, path: str):
    for part in path.split("."):
        layer = getattr(layer, part)
    return layer
