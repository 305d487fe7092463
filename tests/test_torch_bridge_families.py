"""jlang.torch on the newer families (Cohere, Cohere2, BLOOM, OPT, Phi, Phi-3, Gemma3ForConditionalGeneration).

Tiny random models built with transformers' own classes (odd sizes, d_ff distinct from d_model, random
norms and biases). The bridge is checked against the models themselves, not against jlang's JAX decoder:
the tensor its hook rewrites is the neuron (the input of the output projection, or its gate factor), and
its logits equal those of the same edit made by swapping each layer's activation module by hand, with the
module paths written out here rather than taken from `jlang.torch`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from jlang import edits as E
from jlang.masks import NeuronMasks

torch = pytest.importorskip("torch")
import jlang.torch as jt  # noqa: E402

V = 131
LANGS = ["en", "fr", "zh"]
IDS = np.random.default_rng(0).integers(3, V, (2, 13))
SPECIAL = dict(vocab_size=V, pad_token_id=0, bos_token_id=1, eos_token_id=2)


class Family(NamedTuple):
    config: object
    F: int  # neurons per layer
    layers: str  # where the decoder layers are
    act: str  # the activation module, from a layer: its output is the neuron
    out: str  # the output projection, from a layer
    gated: bool  # `out` sees act(gate) * up rather than the neurons
    act_class: str  # the activation module's class
    layout: str  # jlang.torch's MLPLayout name


def _families() -> dict[str, Family]:
    import transformers as T

    gqa = dict(hidden_size=48, intermediate_size=83, num_attention_heads=6, num_key_value_heads=2, **SPECIAL)
    gemma_text = T.Gemma3TextConfig(**gqa, num_hidden_layers=4, head_dim=16, sliding_window=4)
    siglip = T.SiglipVisionConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    tokens = dict(mm_tokens_per_image=4, image_token_index=130, boi_token_index=128, eoi_token_index=129)
    opt = dict(hidden_size=48, ffn_dim=83, num_hidden_layers=3, num_attention_heads=6, max_position_embeddings=64)
    gated = ("mlp.act_fn", "mlp.down_proj", True)
    return {
        "cohere": Family(
            T.CohereConfig(**gqa, num_hidden_layers=3, use_qk_norm=True, logit_scale=0.5),
            83,
            "model.layers",
            *gated,
            "SiLUActivation",
            "gated",
        ),
        "cohere2": Family(
            T.Cohere2Config(**gqa, num_hidden_layers=4, sliding_window=4),
            83,
            "model.layers",
            *gated,
            "SiLUActivation",
            "gated",
        ),
        "bloom": Family(  # d_ff = 4 * hidden_size
            T.BloomConfig(hidden_size=36, n_layer=3, n_head=4, **SPECIAL),
            144,
            "transformer.h",
            "mlp.gelu_impl",
            "mlp.dense_4h_to_h",
            False,
            "BloomGelu",
            "bloom",
        ),
        "opt": Family(  # word_embed_proj_dim != hidden_size: project_in / project_out
            T.OPTConfig(**opt, word_embed_proj_dim=40, **SPECIAL),
            83,
            "model.decoder.layers",
            "activation_fn",
            "fc2",
            False,
            "ReLU",
            "opt",
        ),
        "opt-post-norm": Family(  # OPT-350m's do_layer_norm_before=False
            T.OPTConfig(**opt, do_layer_norm_before=False, activation_function="gelu", **SPECIAL),
            83,
            "model.decoder.layers",
            "activation_fn",
            "fc2",
            False,
            "GELUActivation",
            "opt",
        ),
        "phi": Family(
            T.PhiConfig(**{**gqa, "num_key_value_heads": 6}, num_hidden_layers=3, partial_rotary_factor=0.5),
            83,
            "model.layers",
            "mlp.activation_fn",
            "mlp.fc2",
            False,
            "NewGELUActivation",
            "fc",
        ),
        "phi3": Family(  # fused gate_up_proj: act(first half) * second half
            T.Phi3Config(**gqa, num_hidden_layers=3),
            83,
            "model.layers",
            "mlp.activation_fn",
            "mlp.down_proj",
            True,
            "SiLUActivation",
            "fused-gated",
        ),
        "gemma3-multimodal": Family(  # the text model inside the multimodal wrapper; not the vision tower's MLPs
            T.Gemma3Config(text_config=gemma_text, vision_config=siglip, **tokens),
            83,
            "model.language_model.layers",
            *gated,
            "GELUTanh",
            "gated",
        ),
    }


FAMILIES = _families()


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _build(name: str):
    """A random float32 model: norms and biases away from their defaults."""
    from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration

    config = FAMILIES[name].config
    torch.manual_seed(0)
    if name == "gemma3-multimodal":
        model = Gemma3ForConditionalGeneration(config)
    else:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_((0.0 if name.startswith("gemma") else 1.0) + 0.3 * torch.randn_like(p))
            elif "bias" in pname:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict:
    return {name: _build(name) for name in FAMILIES}


def _logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits.float()


def _layers(name: str, model) -> list:
    return list(_get(model, FAMILIES[name].layers))


def random_masks(L: int, F: int, rate: float, seed: int = 0) -> NeuronMasks:
    rng = np.random.default_rng(seed)
    return NeuronMasks(list(LANGS), rng.random((len(LANGS), L, F)) < rate, {"method": "random"})


class Edited(torch.nn.Module):
    """An activation module followed by `where(mask, a * scale + shift, a)`: the edit without hooks."""

    def __init__(self, inner, mask, scale, shift):
        super().__init__()
        self.inner = inner
        self.m, self.s, self.b = (torch.as_tensor(np.array(x)) for x in (mask, scale, shift))

    def forward(self, x):
        a = self.inner(x)
        return torch.where(self.m, a * self.s.to(a.dtype) + self.b.to(a.dtype), a)


def _surgery_logits(name: str, model, *edits_list) -> torch.Tensor:
    """Logits with each layer's activation module wrapped by `Edited`, one wrapper per edit (first innermost)."""
    fam = FAMILIES[name]
    parent_path, _, attr = fam.act.rpartition(".")
    layers = _layers(name, model)
    originals = [_get(layer, fam.act) for layer in layers]
    try:
        for l, layer in enumerate(layers):
            module = originals[l]
            for edits in edits_list:
                module = Edited(module, edits.mask[l], edits.scale[l], edits.shift[l])
            setattr(_get(layer, parent_path) if parent_path else layer, attr, module)
        return _logits(model)
    finally:
        for layer, original in zip(layers, originals):
            setattr(_get(layer, parent_path) if parent_path else layer, attr, original)


def _out_inputs(name: str, model, edits=None) -> list[torch.Tensor]:
    """The input of every layer's output projection (after the bridge's hooks when `edits` is given)."""
    seen: list = []
    hooks = [
        _get(layer, FAMILIES[name].out).register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
        for layer in _layers(name, model)
    ]
    try:
        if edits is None:
            _logits(model)
        else:
            with jt.apply(model, edits):
                _logits(model)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _no_hooks_left(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_layout_and_shape(models, name):
    fam, model = FAMILIES[name], models[name]
    L = len(_layers(name, model))
    assert jt.mlp_shape(model) == (L, fam.F)
    assert fam.F != getattr(fam.config, "hidden_size", None)
    assert jt.mlp_layout(model).name == fam.layout
    layers = jt.decoder_layers(model)
    assert [id(x) for x in layers] == [id(x) for x in _layers(name, model)]
    assert {type(_get(layer, fam.act)).__name__ for layer in layers} == {fam.act_class}


def test_base_models_without_the_lm_head(models):
    """A bare BloomModel (`h`), OPTModel (`decoder.layers`), PhiModel and Gemma3TextModel (`layers`)."""
    assert jt.mlp_shape(models["bloom"].transformer) == (3, 144)
    assert jt.mlp_shape(models["opt"].model) == (3, 83)
    assert jt.mlp_shape(models["phi"].model) == (3, 83)
    assert jt.mlp_shape(models["gemma3-multimodal"].model.language_model) == (4, 83)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_hook_rewrites_exactly_the_neurons(models, name):
    """One middle layer edited: earlier layers untouched; in it the output projection's input changes in
    the masked columns only: 0 when deactivated; for amplify x3, 3 a (non-gated) or (3 a) * up (gated)."""
    fam, model = FAMILIES[name], models[name]
    L, F = jt.mlp_shape(model)
    l = L // 2
    mask = np.zeros((1, L, F), bool)
    mask[0, l] = np.random.default_rng(l).random(F) < 0.3
    masks = NeuronMasks(["xx"], mask, {})
    cols = torch.from_numpy(mask[0, l])
    plain = _out_inputs(name, model)
    assert plain[l].shape[-1] == F
    for edits, expect in [
        (E.deactivate(masks, "xx"), lambda x: torch.zeros_like(x)),
        (E.deactivate(masks, "xx", value=-1.0), None if fam.gated else lambda x: torch.full_like(x, -1.0)),
        (E.amplify(masks, "xx", 3.0), lambda x: 3.0 * x),
    ]:
        edited = _out_inputs(name, model, edits)
        for k in range(l):
            torch.testing.assert_close(edited[k], plain[k], rtol=0, atol=0)
        torch.testing.assert_close(edited[l][..., ~cols], plain[l][..., ~cols], rtol=0, atol=0)
        if expect is not None:
            exact = 0 if not fam.gated else 1e-6
            torch.testing.assert_close(edited[l][..., cols], expect(plain[l][..., cols]), rtol=exact, atol=exact)
        assert (edited[l][..., cols] != plain[l][..., cols]).any()
    assert _no_hooks_left(model)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bridge_equals_swapped_activation_modules(models, name):
    """Edits in every layer: the bridge's logits equal those with each activation module wrapped by hand;
    removing the hooks restores the logits bit for bit."""
    model = models[name]
    L, F = jt.mlp_shape(model)
    masks = random_masks(L, F, 0.15)
    plain = _logits(model)
    for edits in [
        E.deactivate(masks, "fr"),
        E.deactivate(masks, ["en", "zh"], value=-1.0),
        E.amplify(masks, "zh", 4.0),
        E.set_to(masks, "en", np.linspace(-1, 1, L * F, dtype=np.float32).reshape(L, F)),
    ]:
        handle = jt.apply(model, edits)
        assert handle.layers == [l for l in range(L) if edits.mask[l].any()]
        theirs = _logits(model)
        handle.remove()
        torch.testing.assert_close(theirs, _surgery_logits(name, model, edits), rtol=0, atol=0)
        assert (theirs - plain).abs().max() > 1e-3
        torch.testing.assert_close(_logits(model), plain, rtol=0, atol=0)
    with jt.apply(model, masks, lang="fr"):  # the mask itself, deactivated as LAPE does
        torch.testing.assert_close(_logits(model), _surgery_logits(name, model, E.deactivate(masks, "fr")))
    assert _no_hooks_left(model)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_stacked_applies_compose(models, name):
    model = models[name]
    L, F = jt.mlp_shape(model)
    masks = random_masks(L, F, 0.3, seed=1)
    first, second = E.deactivate(masks, "fr", value=-1.0), E.amplify(masks, "zh", 2.5)
    assert (masks["fr"] & masks["zh"]).any()  # overlapping: the order matters
    with jt.apply(model, first), jt.apply(model, second):
        stacked = _logits(model)
    torch.testing.assert_close(stacked, _surgery_logits(name, model, first, second), rtol=0, atol=0)
    with jt.apply(model, E.combine(first, second)):
        torch.testing.assert_close(_logits(model), stacked, rtol=0, atol=1e-5)
    assert _no_hooks_left(model)


@pytest.mark.parametrize("name", ["bloom", "opt", "phi"])
def test_shared_activation_of_a_non_gated_mlp_hooks_the_output_projection(name):
    """One activation module for all layers (a hook on it could not tell the layers apart): the bridge
    rewrites the output projection's input instead, which is the same tensor."""
    fam, model = FAMILIES[name], _build(name)
    L, F = jt.mlp_shape(model)
    edits = E.deactivate(random_masks(L, F, 0.2), "zh", value=-0.5)
    with jt.apply(model, edits):
        per_layer = _logits(model)
    parent_path, _, attr = fam.act.rpartition(".")
    shared = _get(_layers(name, model)[0], fam.act)
    for layer in _layers(name, model):
        setattr(_get(layer, parent_path) if parent_path else layer, attr, shared)
    with jt.apply(model, edits) as handle:
        torch.testing.assert_close(_logits(model), per_layer, rtol=0, atol=0)
        assert not shared._forward_hooks and all(
            _get(layer, fam.out)._forward_pre_hooks for layer in _layers(name, model)
        )
    assert _no_hooks_left(model) and not handle.active


def test_shared_activation_of_a_gated_mlp_is_refused():
    model = _build("cohere")
    shared = model.model.layers[0].mlp.act_fn
    for layer in model.model.layers:
        layer.mlp.act_fn = shared
    with pytest.raises(jt.BridgeError, match="share one `mlp.act_fn`.*act \\* up"):
        jt.apply(model, E.identity(jt.mlp_shape(model)))


def test_unknown_mlp_names_the_supported_families():
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ffn = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Layer(), Layer()])

    with pytest.raises(jt.BridgeError, match="no decoder layers with a known MLP.*BLOOM.*Phi \\(Phi-2\\).*OPT"):
        jt.mlp_shape(Model())
    assert {x.name for x in jt.MLP_LAYOUTS} == {fam.layout for fam in FAMILIES.values()}
