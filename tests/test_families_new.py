"""Cohere 1/2, BLOOM, OPT, Phi, Phi-3 and Gemma 3's multimodal checkpoints against transformers' PyTorch models.

Tiny random checkpoints (`tiny_families`) of each family and variant: logits (plain, right- and
left-padded), cached generation, statistics at `mlp.act` against PyTorch hooks on the family's
activation module, a 2 x 4 mesh, export and reload, edits, PLND (ALiBi included), neuron-mode
fine-tuning, and the prefixes and fused tensors of their checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

import jlang
from jlang.methods import plnd as P
from jlang.models.decoder import forward
from jlang.models.families import ModelConfig
from jlang.models.generate import generate, greedy_reference
from jlang.models.sources import CheckpointError
from jlang.stats.collect import run_stats

torch = pytest.importorskip("torch")

NAMES = ["cohere", "cohere2", "bloom", "bloom_resid", "opt", "opt_postln", "phi", "phi3", "gemma3_mm"]
FAMILY = {"bloom_resid": "bloom", "opt_postln": "opt", "gemma3_mm": "gemma3"}
ROPE = {"cohere", "cohere2", "phi", "phi3", "gemma3_mm"}  # families whose HF forward takes position_ids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> (HF directory, torch model, jlang Model), built once."""
    from tiny_families import new_family_configs, save_new_tiny

    root = tmp_path_factory.mktemp("tiny_new")
    out = {}
    for name, config in new_family_configs().items():
        torch_model = save_new_tiny(config, root / name)
        out[name] = (root / name, torch_model, jlang.load_model(root / name, progress=False))
    return out


def _ids(vocab, batch=2, seq=13, seed=0):
    # seq 13 > the windows (4) of Cohere2 and Gemma 3; ids below 100 (Gemma 3's image token)
    return np.random.default_rng(seed).integers(3, min(vocab, 100) - 1, (batch, seq))


def _torch_logits(name, torch_model, ids, mask=None):
    kw = {}
    if mask is not None:
        kw["attention_mask"] = torch.tensor(mask.astype(np.int64))
        if name in ROPE:  # HF's llama-like models take positions as given; BLOOM/OPT derive them from the mask
            kw["position_ids"] = torch.tensor(np.maximum(np.cumsum(mask, axis=1) - 1, 0))
    with torch.no_grad():
        return torch_model(torch.tensor(ids), **kw).logits.numpy()


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(tiny, name):
    _, torch_model, model = tiny[name]
    assert model.family == FAMILY.get(name, name)
    ids = _ids(model.config.vocab_size)
    ref = _torch_logits(name, torch_model, ids)
    out = model.logits(ids)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-4


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", NAMES)
def test_padded_batches_match_transformers(tiny, name, side):
    """Rows of 13, 7 and 3 tokens padded as jlang pads them (positions count valid tokens, as HF's
    cumulative sum of the attention mask); only valid tokens are compared."""
    _, torch_model, model = tiny[name]
    ids = _ids(model.config.vocab_size, batch=3)
    valid = np.zeros(ids.shape, bool)
    for r, n in enumerate([13, 7, 3]):
        valid[r, :n] = True
    if side == "left":
        valid = valid[:, ::-1].copy()
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    out, _ = model.forward(model.place_batch(ids), positions=jax.numpy.asarray(positions), valid=valid)
    ref = _torch_logits(name, torch_model, ids, valid)
    assert np.abs(np.asarray(out)[valid] - ref[valid]).max() <= 1e-4


PROMPTS = ["w5 w9 w11 w4 w7 w8 w9 w10 w11", "w90 w7", "w3 w4 w5 w6"]


@pytest.mark.parametrize("name", ["cohere2", "bloom", "opt_postln"])
def test_cached_generation_equals_full_recomputation(tiny, name):
    """Left-padded prompts, generation past Cohere2's window: ALiBi and learned positions in the cache."""
    model = tiny[name][2]
    assert generate(model, PROMPTS, max_new_tokens=8) == greedy_reference(model, PROMPTS, max_new_tokens=8)


def _act_modules(name, torch_model):
    """The module whose output is the neuron activation, per layer (where LAPE hooks)."""
    if name.startswith("bloom"):
        return [layer.mlp.gelu_impl for layer in torch_model.transformer.h]
    if name.startswith("opt"):
        return [layer.activation_fn for layer in torch_model.model.decoder.layers]
    if name == "gemma3_mm":
        return [layer.mlp.act_fn for layer in torch_model.model.language_model.layers]
    if name in ("phi", "phi3"):
        return [layer.mlp.activation_fn for layer in torch_model.model.layers]
    return [layer.mlp.act_fn for layer in torch_model.model.layers]


@pytest.mark.parametrize("name", NAMES)
def test_statistics_equal_torch_hooks(tiny, name):
    """Counts of `a > 0` at `mlp.act` equal forward hooks on the activation module, count for count."""
    _, torch_model, model = tiny[name]
    L, F = model.num_layers, model.num_neurons
    rng = np.random.default_rng(3)
    ids = _ids(model.config.vocab_size, batch=3, seq=11, seed=3)
    valid = np.ones(ids.shape, bool)
    for r in range(3):
        valid[r, rng.integers(2, 12) :] = False
    acc = run_stats(model, [{"ids": ids, "valid": valid, "lang": np.zeros(3, np.int64)}], 1, progress=False)
    seen, outputs, hooks = set(), [], []
    for module in _act_modules(name, torch_model):
        if id(module) not in seen:  # a module shared by layers is hooked once and fires once per layer
            seen.add(id(module))
            hooks.append(module.register_forward_hook(lambda m, i, o: outputs.append(o.detach().numpy())))
    try:
        _torch_logits(name, torch_model, ids, valid)
    finally:
        for h in hooks:
            h.remove()
    assert len(outputs) == L and outputs[0].shape[-1] == F
    ref = np.stack([((o.reshape(*ids.shape, -1) > 0) & valid[..., None]).sum(axis=(0, 1)) for o in outputs])
    np.testing.assert_array_equal(acc.over_zero[0], ref)
    assert acc.tokens[0] == valid.sum() and 0 < ref.sum() < valid.sum() * L * F


@pytest.mark.parametrize("name", NAMES)
def test_mesh_equals_single_device_and_sliced_loading_equals_whole(tiny, name):
    """On a 2 x 4 mesh each device's slices (fused q/k/v read by region) are the single-device arrays."""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    path, _, single = tiny[name]
    mesh = jlang.parallel.make_mesh(data=2, model=4)
    sharded = jlang.load_model(path, mesh=mesh, progress=False)
    for k, v in single.params.items():
        np.testing.assert_array_equal(np.asarray(sharded.params[k]), np.asarray(v), err_msg=k)
    ids = _ids(single.config.vocab_size, batch=4)
    np.testing.assert_allclose(sharded.logits(ids), single.logits(ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_export_reloads_in_transformers(tiny, name, tmp_path):
    """Exported (fused tensors fused back; Gemma 3's text model as Gemma3ForCausalLM), reloaded by transformers."""
    from transformers import AutoModelForCausalLM

    from jlang.models.export import save_hf

    model = tiny[name][2]
    out = save_hf(model, tmp_path / "hf")
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    ids = _ids(model.config.vocab_size)
    assert np.abs(_torch_logits(name, back, ids) - model.logits(ids)).max() <= 1e-4
    assert jlang.load_model(out, progress=False).config == model.config


@pytest.mark.parametrize("name", NAMES)
def test_deactivation_changes_logits_and_equals_zeroed_weights(tiny, name):
    """Deactivating neurons of a plain MLP = zeroing their W_in rows and biases (act(0) = 0 for GELU/ReLU)."""
    from jlang import edits as E

    model = tiny[name][2]
    c = model.config
    mask = np.zeros((c.num_layers, c.d_ff), bool)
    mask[:, ::3] = True
    ids = _ids(c.vocab_size)
    edited = model.logits(ids, edits=E.deactivate(mask, model=model))
    assert np.abs(edited - model.logits(ids)).max() > 1e-3
    if c.gated_mlp:
        return
    params = dict(model.params)
    params["layers.up"] = params["layers.up"] * ~mask[:, None, :]
    if c.mlp_bias:
        params["layers.up_bias"] = params["layers.up_bias"] * ~mask
    ref, _ = forward(params, jax.numpy.asarray(ids), model.config)
    np.testing.assert_allclose(edited, np.asarray(ref), atol=1e-5, rtol=0)


def _qk_reference(q, k, bias, allowed, valid, scale):
    """PLND's released Q/K score with ALiBi: Σ (softmax(S − q_d k_d) − softmax(S))², S = q·k·scale + bias."""
    b, t, H, D = q.shape
    s = np.einsum("bthd,bshd->bhts", q, k) * scale + bias[:, :, None, :]

    def softmax(x):
        x = np.where(allowed[:, None], x, -np.inf)
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p = softmax(s)
    out = np.zeros((b, H * D))
    for h in range(H):
        for j in range(D):
            s_d = s.copy()
            s_d[:, h] -= np.einsum("bt,bs->bts", q[:, :, h, j], k[:, :, h, j])
            out[:, h * D + j] = np.where(valid[:, :, None], (softmax(s_d)[:, h] - p[:, h]) ** 2, 0).sum(axis=(1, 2))
    return out


def test_plnd_attention_scores_include_alibi(tiny):
    model = tiny["bloom"][2]
    ids = _ids(model.config.vocab_size, batch=2, seq=9)
    valid = np.ones(ids.shape, bool)
    valid[1, 6:] = False
    _, pts = model.forward(model.place_batch(ids), valid=valid, probe=lambda points, v: dict(points))
    pts = {k: np.asarray(v, np.float64) for k, v in pts.items()}
    fast = P.document_scores(model, ids, valid)["qk"]
    for layer in range(model.num_layers):
        ref = _qk_reference(
            pts["attn.q"][layer],
            pts["attn.k"][layer],
            pts["attn.bias"][layer],
            pts["attn.allowed"][layer].astype(bool),
            valid,
            model.config.attn_scale,
        )
        assert ref.max() > 1e-4
        np.testing.assert_allclose(fast[:, layer], ref, rtol=2e-3, atol=1e-7)


@pytest.mark.parametrize("name", ["cohere", "opt_postln", "phi", "phi3", "gemma3_mm"])
def test_plnd_scores_run(tiny, name):
    model = tiny[name][2]
    scores = P.document_scores(model, _ids(model.config.vocab_size), mode="paper")
    c = model.config
    assert scores["ffn"].shape == (2, c.num_layers, c.d_ff) and np.isfinite(scores["qk"]).all()
    assert scores["vo"].shape == (2, c.num_layers, c.num_heads * c.head_dim)


def test_neuron_finetune_changes_only_their_weights(tiny, tmp_path):
    """`trainable: neurons` on a plain MLP with biases (OPT): W_in columns, their biases and W_out rows."""
    from test_finetune import params_of, tiny_config

    from jlang.masks import NeuronMasks
    from jlang.train.sft import finetune

    path, _, model = tiny["opt"]
    rows = []
    rng = np.random.default_rng(0)
    for i in range(24):
        words = rng.integers(4, 40, 4)
        text = {"aa": " ".join(f"w{w}" for w in words), "bb": " ".join(f"w{w + 40}" for w in words)}
        rows.append({"id": str(i), "text": text | {"cc": text["bb"]}})
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    L, F = model.num_layers, model.num_neurons
    masks = NeuronMasks(["bb", "cc"], rng.random((2, L, F)) < 0.2, {"family": "opt"})
    masks.save(tmp_path / "masks.npz")
    cfg = tiny_config(
        path,
        tmp_path / "p.jsonl",
        tmp_path / "run",
        trainable="neurons",
        masks=str(tmp_path / "masks.npz"),
        mask_languages=("bb",),
        train={"steps": 2, "weight_decay": 0.1},
    )
    base, tuned = params_of(path), params_of(finetune(cfg, progress=False))
    changed = {k for k in base if not np.array_equal(base[k], tuned[k])}
    assert changed == {"layers.up", "layers.up_bias", "layers.down"}
    off = ~masks["bb"]
    for layer in range(L):
        np.testing.assert_array_equal(tuned["layers.up"][layer][:, off[layer]], base["layers.up"][layer][:, off[layer]])
    np.testing.assert_array_equal(tuned["layers.up_bias"][off], base["layers.up_bias"][off])


def _rewrite_names(src, dst, rename):
    """Copy an HF directory with its tensors renamed (older checkpoints' prefixes)."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    save_file({rename(k): v for k, v in tensors.items()}, dst / "model.safetensors", metadata={"format": "pt"})


def test_older_checkpoint_prefixes_load(tiny, tmp_path):
    """BLOOM saved from BloomModel (no `transformer.`); Gemma 3 multimodal before transformers 5."""
    bloom_dir, _, bloom = tiny["bloom"]
    _rewrite_names(bloom_dir, tmp_path / "bloom", lambda k: k.removeprefix("transformer."))
    gemma_dir, _, gemma = tiny["gemma3_mm"]

    def old_gemma(k):
        if k.startswith("model.language_model."):
            return "language_model.model." + k.removeprefix("model.language_model.")
        return "language_model." + k if k.startswith("lm_head.") else k.removeprefix("model.")

    _rewrite_names(gemma_dir, tmp_path / "gemma", old_gemma)
    for model, d in ((bloom, tmp_path / "bloom"), (gemma, tmp_path / "gemma")):
        ids = _ids(model.config.vocab_size)
        np.testing.assert_array_equal(jlang.load_model(d, progress=False).logits(ids), model.logits(ids))


def test_bad_fused_tensors_are_named(tiny, tmp_path):
    from safetensors.numpy import load_file, save_file

    src = tiny["bloom"][0]
    shutil.copytree(src, tmp_path / "bad")
    tensors = load_file(tmp_path / "bad" / "model.safetensors")
    del tensors["transformer.h.1.self_attention.query_key_value.bias"]
    w = "transformer.h.0.self_attention.query_key_value.weight"
    tensors[w] = tensors[w][:-8]
    save_file(tensors, tmp_path / "bad" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        jlang.load_model(tmp_path / "bad", progress=False)
    assert "transformer.h.1.self_attention.query_key_value.bias" in str(e.value)
    assert f"{w}: expected (120, 40), found (112, 40)" in str(e.value)


def test_configs_saved_before_the_new_fields_still_load(tiny):
    cfg = tiny["phi3"][2].config
    old = {k: v for k, v in cfg.to_dict().items() if k in [f.name for f in dataclasses.fields(ModelConfig)][:25]}
    assert ModelConfig.from_dict(old) == cfg
    assert ModelConfig.from_dict(tiny["opt_postln"][2].config.to_dict()) == tiny["opt_postln"][2].config


@pytest.mark.parametrize("name", NAMES)
def test_bridge_equals_jlang_intervened_logits(tiny, name):
    """The PyTorch bridge's hook on each family's activation module gives jlang's intervened logits."""
    from test_torch_bridge import interventions, random_masks, random_stats

    import jlang.torch as jt

    _, torch_model, model = tiny[name]
    L, F = model.num_layers, model.num_neurons
    assert jt.mlp_shape(torch_model) == (L, F)
    masks, stats = random_masks(L, F, 0.15), random_stats(L, F)
    ids = _ids(model.config.vocab_size)
    plain = _torch_logits(name, torch_model, ids)
    for case, (edits, _) in interventions(masks, stats).items():
        ours = model.logits(ids, edits=edits)
        with jt.apply(torch_model, edits):
            theirs = _torch_logits(name, torch_model, ids)
        assert np.abs(theirs - plain).max() > 1e-3, f"{case} did not change the logits"
        assert np.abs(ours - theirs).max() <= 1e-4, (case, float(np.abs(ours - theirs).max()))
    np.testing.assert_array_equal(_torch_logits(name, torch_model, ids), plain)  # hooks removed
