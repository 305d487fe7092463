"""The statistics pass against PyTorch hooks on `mlp.act_fn`, and on a mesh."""

import jax
import numpy as np
import pytest

import jlang
from jlang.stats.collect import Accumulator, run_stats

torch = pytest.importorskip("torch")


def _batches(vocab, K=3, n=4, b=3, t=11, seed=0, pad=True):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(0, vocab, (b, t))
        valid = np.ones((b, t), bool)
        if pad:  # right padding of random length, as sentence-by-sentence batches have
            for r in range(b):
                valid[r, rng.integers(1, t + 1) :] = False
        out.append({"ids": ids, "valid": valid, "lang": rng.integers(0, K, b)})
    return out


def torch_reference(torch_model, batches, K):
    """What a PyTorch user would write: forward hooks on each layer's mlp.act_fn."""
    layers = torch_model.model.layers
    L, F = len(layers), torch_model.config.intermediate_size
    over_zero = np.zeros((K, L, F), np.int64)
    sums = np.zeros((K, L, F))
    tokens = np.zeros(K, np.int64)
    current = {}
    hooks = [
        layer.mlp.act_fn.register_forward_hook(lambda m, i, o, l=l: current.__setitem__(l, o.detach().numpy()))
        for l, layer in enumerate(layers)
    ]
    try:
        for batch in batches:
            with torch.no_grad():
                torch_model(torch.tensor(batch["ids"]))
            for r, lang in enumerate(batch["lang"]):
                v = batch["valid"][r]
                tokens[lang] += v.sum()
                for l in range(L):
                    a = current[l][r][v]
                    over_zero[lang, l] += (a > 0).sum(0)
                    sums[lang, l] += a.sum(0)
    finally:
        for h in hooks:
            h.remove()
    return tokens, over_zero, sums


@pytest.mark.parametrize("name", ["llama2", "qwen3", "gemma2", "gemma3"])
def test_counts_equal_pytorch_hooks(tiny_dirs, name):
    path, torch_model = tiny_dirs[name]
    model = jlang.load_model(path, progress=False)
    # padding with right-pad only: HF sees the padded tokens too, but causal attention keeps them out of valid rows
    batches = _batches(model.config.vocab_size)
    acc = run_stats(model, batches, 3, progress=False)
    tokens, over_zero, sums = torch_reference(torch_model, batches, 3)
    np.testing.assert_array_equal(acc.tokens, tokens)
    np.testing.assert_array_equal(acc.over_zero, over_zero)
    np.testing.assert_allclose(acc.sum, sums, rtol=1e-4, atol=1e-4)


def test_mesh_counts_exactly_equal(tiny_dirs):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 fake devices")
    path, _ = tiny_dirs["gemma3"]
    single = jlang.load_model(path, progress=False)
    sharded = jlang.load_model(path, progress=False, mesh=jlang.parallel.make_mesh(data=2, model=4))
    batches = _batches(single.config.vocab_size, b=3)  # 3 rows: padded to 4 with rows that count nothing
    a = run_stats(single, batches, 3, progress=False)
    b = run_stats(sharded, batches, 3, progress=False)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.over_zero, b.over_zero)
    np.testing.assert_allclose(a.sum, b.sum, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.max, b.max, rtol=1e-5, atol=1e-5)  # float rounding differs per sharding


def test_padding_never_counts(tiny_dirs):
    path, _ = tiny_dirs["llama2"]
    model = jlang.load_model(path, progress=False)
    batch = _batches(model.config.vocab_size, n=1)[0]
    batch["valid"][:] = False
    acc = run_stats(model, [batch], 3, progress=False)
    assert acc.tokens.sum() == 0 and acc.over_zero.sum() == 0 and np.isneginf(acc.max).all()


def test_accumulator_is_exact_past_float32_and_int32():
    """Folding is int64/float64 on the host: increments that float32 or int32 would lose survive."""
    acc = Accumulator(1, 1, 2)
    one = {
        "tokens": np.array([[2**30]], np.int32),
        "over_zero": np.array([[[2**30, 1]]], np.int32),
        "sum": np.array([[[1.0, 0.5]]], np.float32),
        "sum_sq": np.zeros((1, 1, 2), np.float32),
        "max": np.zeros((1, 1, 2), np.float32),
    }
    for _ in range(5):  # 5 * 2^30 > 2^32
        acc.add(one)
    assert acc.tokens[0] == 5 * 2**30 and acc.over_zero[0, 0, 0] == 5 * 2**30
    acc.sum[:] = 2.0**25  # beyond float32's integer range: +1 still counts in float64
    acc.add(one)
    assert acc.sum[0, 0, 0] == 2.0**25 + 1


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_collect_stats_one_device_equals_mesh(tiny_dirs, mode):
    """collect_stats end to end (tokenize -> batches -> pass) on 1 device and on a 2x4 mesh."""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 fake devices")
    from jlang.stats.collect import collect_stats

    # not qwen2: transformers 5 forces Qwen2Tokenizer, which ignores the tiny word-level tokenizer.json
    path, _ = tiny_dirs["mistral"]
    model = jlang.load_model(path, progress=False)
    rng = np.random.default_rng(1)
    corpus = {
        lang: [" ".join(f"w{w}" for w in rng.integers(4, 130, rng.integers(3, 20))) for _ in range(30)]
        for lang in ("aa", "bb")
    }
    kw = dict(batch_size=6, seq_len=16, mode=mode, progress=False)
    one = collect_stats(model, corpus, **kw)
    mesh = collect_stats(model, corpus, mesh=jlang.parallel.make_mesh(data=2, model=4), **kw)
    np.testing.assert_array_equal(one.tokens, mesh.tokens)
    np.testing.assert_array_equal(one.over_zero, mesh.over_zero)
    np.testing.assert_allclose(one.sum, mesh.sum, rtol=1e-5, atol=1e-4)
    assert one.tokens.min() > 200 and one.meta["mode"] == mode


def test_packing_equals_padding_when_valid_tokens_are_the_same(tiny_dirs):
    """Documents of exactly seq_len tokens (no BOS): packing and padding make the same rows."""
    from jlang.stats.collect import collect_stats

    path, _ = tiny_dirs["gemma3"]
    model = jlang.load_model(path, progress=False)
    rng = np.random.default_rng(2)
    corpus = {lang: [" ".join(f"w{w}" for w in rng.integers(4, 130, 12)) for _ in range(10)] for lang in ("aa", "bb")}
    kw = dict(batch_size=4, seq_len=12, add_bos=False, progress=False)
    packed = collect_stats(model, corpus, mode="pack", **kw)
    padded = collect_stats(model, corpus, mode="pad", **kw)
    np.testing.assert_array_equal(packed.tokens, [120, 120])
    np.testing.assert_array_equal(packed.tokens, padded.tokens)
    np.testing.assert_array_equal(packed.over_zero, padded.over_zero)
    np.testing.assert_allclose(packed.sum, padded.sum, rtol=1e-6)


def test_repeated_passes_reuse_the_compiled_step(tiny_dirs):
    from jlang.stats.collect import jitted_stats_step

    path, _ = tiny_dirs["llama2"]
    model = jlang.load_model(path, progress=False)
    batches = _batches(model.config.vocab_size, K=3, n=2)
    first = run_stats(model, batches, 3, progress=False)
    compiled = jitted_stats_step._cache_size()
    again = run_stats(model, batches, 3, progress=False)
    assert jitted_stats_step._cache_size() == compiled  # no new compilation for the same model and shapes
    assert np.array_equal(first.over_zero, again.over_zero)
    run_stats(model, batches, 4, progress=False)  # another language count is another program
    assert jitted_stats_step._cache_size() == compiled + 1


def test_token_id_files_need_no_tokenizer(tmp_path):
    """A LAPE token-id corpus runs on a model directory without tokenizer files; text there is refused by name."""
    from tiny_models import build_torch_model, family_configs, save_tiny

    from jlang.data.sources import CorpusError
    from jlang.io import torchfile

    config = family_configs()["llama2"]
    bare, full = tmp_path / "bare", tmp_path / "full"
    build_torch_model(config).save_pretrained(bare)  # weights and config only
    save_tiny(config, full)
    ids = np.random.default_rng(0).integers(4, config.vocab_size, 200).astype(np.int64)
    torchfile.save(tmp_path / "id.fr.train.llama", ids)
    without = jlang.load_model(bare, progress=False)
    assert without.tokenizer is None
    got = jlang.collect_stats(without, {"fr": tmp_path / "id.fr.train.llama"}, batch_size=2, seq_len=8, progress=False)
    ref = jlang.collect_stats(
        jlang.load_model(full, progress=False),
        {"fr": tmp_path / "id.fr.train.llama"},
        batch_size=2,
        seq_len=8,
        progress=False,
    )
    assert got.tokens[0] == 200 // 8 * 8
    np.testing.assert_array_equal(got.over_zero, ref.over_zero)
    np.testing.assert_array_equal(got.sum, ref.sum)
    (tmp_path / "fr.txt").write_text("w5 w6 w7\n")
    with pytest.raises(CorpusError, match=r"'fr'.*is text and there is no tokenizer"):
        jlang.collect_stats(without, {"fr": tmp_path / "fr.txt"}, batch_size=2, seq_len=8, progress=False)
