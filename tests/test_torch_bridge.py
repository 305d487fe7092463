"""jlang.torch: the same edits through PyTorch hooks and through jlang's forward give the same logits."""

from __future__ import annotations

import numpy as np
import pytest

import jlang
from jlang import edits as E
from jlang.masks import MaskShapeError, NeuronMasks
from jlang.stats import ActivationStats

torch = pytest.importorskip("torch")
import jlang.torch as jt  # noqa: E402

FAMILIES = ["llama2", "llama3", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]
LANGS = ["en", "fr", "zh"]


def _torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def random_masks(L, F, rate, seed=0, languages=LANGS) -> NeuronMasks:
    """Random, overlapping per-language masks holding about `rate` of the neurons each."""
    rng = np.random.default_rng(seed)
    return NeuronMasks(list(languages), rng.random((len(languages), L, F)) < rate, {"method": "random"})


def random_stats(L, F, seed=0, languages=LANGS, scale=0.2) -> ActivationStats:
    """Plausible statistics: means of a few tenths, probabilities in [0, 1]."""
    rng = np.random.default_rng(seed)
    K = len(languages)
    tokens = np.full(K, 1000)
    over_zero = rng.integers(0, 1001, (K, L, F))
    sums = scale * rng.standard_normal((K, L, F)) * tokens[:, None, None]
    return ActivationStats(list(languages), tokens, over_zero, sum=sums)


def interventions(masks, stats):
    """name -> (jlang Edits, kwargs for jlang.torch.apply on the NeuronMasks): the papers' interventions."""
    return {
        "deactivate": (E.deactivate(masks, "fr"), dict(lang="fr")),  # LAPE
        "deactivate-1": (E.deactivate(masks, "fr", value=-1.0), dict(lang="fr", value=-1.0)),  # Gurgurov δ
        "amplify": (E.amplify(masks, "zh", 4.0), dict(lang="zh", mode="amplify", factor=4.0)),
        "add": (E.add(masks, "zh", stats, alpha=3.0), dict(lang="zh", mode="add", stats=stats, alpha=3.0)),
        "replace": (E.replace(masks, "en", stats), dict(lang="en", mode="replace", stats=stats)),
        "diffmean": (E.diffmean(masks, "en", stats), dict(lang="en", mode="diffmean", stats=stats)),
    }


@pytest.mark.parametrize("name", FAMILIES)
def test_bridge_equals_jlang_on_tiny_models(tiny_dirs, name, record_property):
    path, hf = tiny_dirs[name]
    model = jlang.load_model(path, progress=False)
    L, F = model.num_layers, model.num_neurons
    assert jt.mlp_shape(hf) == (L, F)
    masks, stats = random_masks(L, F, 0.15), random_stats(L, F)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 13))
    plain = _torch_logits(hf, ids)
    worst = {}
    cases = interventions(masks, stats)
    cases["deactivate+add"] = (E.combine(cases["deactivate-1"][0], cases["add"][0]), None)
    for case, (edits, kwargs) in cases.items():
        ours = model.logits(ids, edits=edits)
        with jt.apply(hf, edits):  # the Edits object itself
            theirs = _torch_logits(hf, ids)
        worst[case] = float(np.abs(ours - theirs).max())
        assert worst[case] <= 1e-4, (case, worst[case])
        assert np.abs(theirs - plain).max() > 1e-3, f"{case} did not change the logits"
        if kwargs is not None:  # the same intervention built by the bridge from the masks
            with jt.apply(hf, masks, **kwargs):
                np.testing.assert_array_equal(_torch_logits(hf, ids), theirs)
        np.testing.assert_array_equal(_torch_logits(hf, ids), plain)  # removed
    record_property("max_abs_delta", worst)
    print(f"\n{name}: max|Δlogit| " + " ".join(f"{k}={v:.1e}" for k, v in worst.items()))


def test_stacked_applies_equal_combine(tiny_dirs):
    path, hf = tiny_dirs["qwen3"]
    L, F = jt.mlp_shape(hf)
    masks, stats = random_masks(L, F, 0.3), random_stats(L, F)
    ids = np.random.default_rng(1).integers(0, 100, (1, 11))
    first, second = E.deactivate(masks, "fr", value=-1.0), E.add(masks, "zh", stats, alpha=2.0)
    assert (masks["fr"] & masks["zh"]).any()  # overlapping: the composition matters
    with jt.apply(hf, first), jt.apply(hf, second):
        stacked = _torch_logits(hf, ids)
    with jt.apply(hf, E.combine(first, second)):
        combined = _torch_logits(hf, ids)
    np.testing.assert_allclose(stacked, combined, atol=1e-5, rtol=0)


def test_remove_restores_and_is_idempotent(tiny_dirs):
    path, hf = tiny_dirs["gemma3"]
    L, F = jt.mlp_shape(hf)
    ids = np.arange(3, 15)[None]
    plain = _torch_logits(hf, ids)
    handle = jt.apply(hf, random_masks(L, F, 0.2), lang="en")
    assert handle.active and handle.layers
    assert np.abs(_torch_logits(hf, ids) - plain).max() > 1e-3
    handle.remove()
    handle.remove()
    assert not handle.active and "removed" in repr(handle)
    np.testing.assert_array_equal(_torch_logits(hf, ids), plain)
    assert all(not layer.mlp.act_fn._forward_hooks for layer in jt.decoder_layers(hf))


def test_mask_files_and_lape_lists(tiny_dirs, tmp_path):
    """.npz, LAPE .pt (torch.save List[List[LongTensor]]), the loaded list and one language's mask[k]."""
    path, hf = tiny_dirs["mistral"]
    L, F = jt.mlp_shape(hf)
    masks = random_masks(L, F, 0.2)
    ids = np.arange(5, 17)[None]
    with jt.apply(hf, masks, lang="zh"):
        ref = _torch_logits(hf, ids)
    masks.save(tmp_path / "m.npz")
    masks.to_lape_pt(tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt")  # what a PyTorch user of LAPE holds
    assert isinstance(loaded[2][0], torch.Tensor)
    for source, kw in [
        (tmp_path / "m.npz", dict(lang="zh")),
        (str(tmp_path / "m.pt"), dict(lang="zh", languages=LANGS)),
        (NeuronMasks.from_lape_pt(tmp_path / "m.pt", LANGS, num_neurons=F), dict(lang="zh")),
        (loaded, dict(lang="zh", languages=LANGS)),
        (loaded[2], {}),
    ]:
        with jt.apply(hf, source, **kw):
            np.testing.assert_array_equal(_torch_logits(hf, ids), ref)


def test_bad_inputs(tiny_dirs, tmp_path):
    path, hf = tiny_dirs["llama2"]
    L, F = jt.mlp_shape(hf)
    other = random_masks(L + 1, F, 0.1)
    with pytest.raises(MaskShapeError, match=f"{L + 1} layers x {F} neurons.*{L} layers x {F}"):
        jt.apply(hf, other, lang="en")
    with pytest.raises(MaskShapeError, match="do not fit"):
        jt.apply(hf, E.identity((L, F + 1)))
    with pytest.raises(jlang.masks.UnknownLanguageError, match=r"\['en', 'fr', 'zh'\]"):
        jt.apply(hf, random_masks(L, F, 0.1), lang="de")
    with pytest.raises(jt.BridgeError, match="unknown mode"):
        jt.apply(hf, random_masks(L, F, 0.1), lang="en", mode="boost")
    random_masks(L, F, 0.1).to_lape_pt(tmp_path / "m.pt")
    with pytest.raises(jt.BridgeError, match="languages="):
        jt.apply(hf, tmp_path / "m.pt", lang="en")
    with pytest.raises(E.EditError, match="finite"):
        jt.apply(hf, random_masks(L, F, 0.1), lang="en", mode="amplify", factor=float("nan"))
    with pytest.raises(jt.BridgeError, match="no decoder layers"):
        jt.apply(torch.nn.Linear(2, 2), E.identity((1, 2)))
    assert all(not layer.mlp.act_fn._forward_hooks for layer in jt.decoder_layers(hf))


# ----------------------------------------------------------------------------- real models (slow)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog, and then it runs away.",
    "La capitale de la France est Paris, une ville très animée.",
    "北京是中国的首都，",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "default"])
def test_bridge_equals_jlang_on_packaged_models(name, record_property):
    from transformers import AutoModelForCausalLM

    from jlang.models.packaged import resolve_packaged

    model = jlang.load_model(name, progress=False)
    p = resolve_packaged(name)
    hf = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32).eval()
    L, F = model.num_layers, model.num_neurons
    assert jt.mlp_shape(hf) == (L, F)
    masks, stats = random_masks(L, F, 0.01), random_stats(L, F, scale=0.1)  # 1% of neurons, like LAPE
    cases = interventions(masks, stats)
    worst, worst_abs = {}, {}
    for sentence in SENTENCES:
        ids = np.asarray([model.tokenizer(sentence)["input_ids"]])
        plain = _torch_logits(hf, ids)
        for case, (edits, _) in cases.items():
            ours = model.logits(ids, edits=edits)
            with jt.apply(hf, edits):
                theirs = _torch_logits(hf, ids)
            delta = float(np.abs(ours - theirs).max())
            worst[case] = max(worst.get(case, 0.0), delta / float(np.abs(theirs).max()))
            worst_abs[case] = max(worst_abs.get(case, 0.0), delta)
            assert np.abs(theirs - plain).max() > 1e-3, f"{case} did not change the logits"
        np.testing.assert_array_equal(_torch_logits(hf, ids), plain)
    record_property("max_rel_delta", worst)
    print(f"\n{name}: max|Δlogit|/max|logit| " + " ".join(f"{k}={v:.1e}" for k, v in worst.items()))
    print(f"{name}: max|Δlogit| " + " ".join(f"{k}={v:.1e}" for k, v in worst_abs.items()))
    assert max(worst.values()) <= 1e-3
