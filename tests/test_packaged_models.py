"""The two packaged real models against transformers loading the same GGUF file (slow).

Both sides dequantise the same GGUF to float32, so the comparison isolates the
model implementation: max |Δlogit| ≤ 1e-3 × max |logit| and identical greedy text.
"""

import time

import numpy as np
import pytest

import jlang
from jlang.models.generate import greedy

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog, and then it runs away.",
    "La capitale de la France est",
    "Столица России —",
    "Ibu kota Indonesia adalah",
    "北京是中国的首都，",
]


def _hf_model(name):
    from transformers import AutoModelForCausalLM

    from jlang.models.packaged import resolve_packaged

    path = resolve_packaged(name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval()


@pytest.mark.parametrize("name", ["smollm2", "default"])
def test_packaged_model_matches_transformers(name, record_property):
    start = time.perf_counter()
    model = jlang.load_model(name, progress=False)
    record_property("load_seconds", round(time.perf_counter() - start, 1))
    hf = _hf_model(name)
    worst = 0.0
    for sentence in SENTENCES:
        ids = np.asarray([model.tokenizer(sentence)["input_ids"]])
        with torch.no_grad():
            ref = hf(torch.tensor(ids)).logits.numpy()
        out = model.logits(ids)
        rel = np.abs(out - ref).max() / np.abs(ref).max()
        worst = max(worst, rel)
        print(
            f"{name}: max|Δ|={np.abs(out - ref).max():.2e} max|logit|={np.abs(ref).max():.1f} "
            f"rel={rel:.2e}  {sentence!r}"
        )
    record_property("max_rel_delta", worst)
    assert worst <= 1e-3

    prompts = SENTENCES[1:4]
    ours = greedy(model, prompts, max_new_tokens=12)
    for prompt, text in zip(prompts, ours):
        ids = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=12, do_sample=False)
        expected = model.tokenizer.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
        print(f"{name}: {prompt!r} -> {text!r}")
        assert text == expected


def test_default_model_is_multilingual_gemma3():
    model = jlang.load_model("default", progress=False)
    assert model.family == "gemma3" and model.num_layers == 18 and model.num_neurons == 2048
    assert model.config.vocab_size == 262144


def test_cached_conversion_equals_fresh_conversion():
    """load_model("smollm2") restores a cached orbax copy after the first load; it must be the
    same model, tokenizer included, as converting the GGUF afresh."""
    from jlang.models.gguf import GGUFSource
    from jlang.models.model import from_source
    from jlang.models.packaged import resolve_packaged

    jlang.load_model("smollm2", progress=False)  # makes sure the cache exists
    cached = jlang.load_model("smollm2", progress=False)
    assert "converted copy" in cached.source
    fresh = from_source(GGUFSource(resolve_packaged("smollm2")), name="smollm2", progress=False)
    for sentence in SENTENCES:
        ids = fresh.tokenizer(sentence)["input_ids"]
        assert cached.tokenizer(sentence)["input_ids"] == ids
        np.testing.assert_array_equal(cached.logits(np.asarray([ids])), fresh.logits(np.asarray([ids])))
