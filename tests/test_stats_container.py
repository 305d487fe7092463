"""jlang.stats.ActivationStats: validation, derived quantities, atomic persistence, reference-file import."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import shared_fixtures

from jlang.io import torchfile
from jlang.stats import ActivationStats, StatsError

LANGS = ["en", "zh", "fr"]


def make_stats(k=3, l=2, f=4, seed=0, **kw) -> ActivationStats:
    rng = np.random.default_rng(seed)
    tokens = np.array([100, 200, 50, 70, 90][:k])
    over_zero = np.stack([rng.integers(0, n + 1, size=(l, f)) for n in tokens])
    return ActivationStats(
        languages=LANGS[:k] if k <= 3 else [f"l{i}" for i in range(k)], tokens=tokens, over_zero=over_zero, **kw
    )


# -- construction and validation ----------------------------------------------------------------------


def test_normalises_dtypes_and_shapes():
    s = make_stats(sum=np.ones((3, 2, 4), np.float32), max=np.ones((3, 2, 4), np.float16), meta={"model": "m"})
    assert s.over_zero.dtype == np.int64 and s.tokens.dtype == np.int64
    assert s.sum.dtype == np.float64 and s.max.dtype == np.float32
    assert (s.num_languages, s.num_layers, s.num_neurons) == (3, 2, 4) and s.shape == (3, 2, 4)
    assert "K=3" in repr(s)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(languages=["en", "zh"], tokens=np.array([1, 1])), "3 languages on axis 0"),
        (dict(languages=["en", "en", "fr"]), "duplicate"),
        (dict(tokens=np.array([1, 2])), "tokens has shape"),
        (dict(tokens=np.array([1, -2, 3])), "negative"),
        (dict(over_zero=-np.ones((3, 2, 4), int)), "negative"),
        (dict(over_zero=np.full((3, 2, 4), 0.5)), "integer counts"),
        (dict(over_zero=np.zeros((3, 8), int)), "3-D"),
        (dict(sum=np.zeros((3, 2, 5))), "sum has shape"),
        (dict(max=np.zeros((3, 2, 4), int)), "floating point"),
    ],
)
def test_rejects_bad_inputs(change, message):
    base = dict(languages=list(LANGS), tokens=np.array([10, 10, 10]), over_zero=np.ones((3, 2, 4), int))
    base.update(change)
    with pytest.raises(StatsError, match=message):
        ActivationStats(**base)


def test_probs_mean_and_zero_token_error():
    s = make_stats(sum=np.ones((3, 2, 4)))
    np.testing.assert_allclose(s.probs, s.over_zero / s.tokens[:, None, None])
    assert s.probs.dtype == np.float64
    np.testing.assert_allclose(s.mean[1], 1 / 200)
    with pytest.raises(StatsError, match="no `sum`"):
        _ = make_stats().mean
    empty = ActivationStats(LANGS, np.array([5, 0, 5]), np.zeros((3, 1, 2), int))
    with pytest.raises(StatsError, match=r"\['zh'\] have 0 tokens"):
        _ = empty.probs


def test_select_and_unknown_language():
    s = make_stats(max=np.arange(24, dtype=np.float32).reshape(3, 2, 4))
    t = s.select(["fr", "en"])
    assert t.languages == ["fr", "en"]
    np.testing.assert_array_equal(t.over_zero, s.over_zero[[2, 0]])
    np.testing.assert_array_equal(t.max, s.max[[2, 0]])
    with pytest.raises(StatsError, match=r"unknown language 'de'.*\['en', 'zh', 'fr'\]"):
        s.select(["de"])


def test_subtract_clamps_counts_like_the_ternary_code():
    full = ActivationStats(["a", "b"], np.array([10, 8]), np.array([[[5, 1]], [[8, 0]]]), sum=np.ones((2, 1, 2)))
    prompt = ActivationStats(["a", "b"], np.array([4, 8]), np.array([[[2, 3]], [[1, 0]]]), sum=np.full((2, 1, 2), 0.25))
    r = full.subtract(prompt)
    np.testing.assert_array_equal(r.tokens, [6, 0])
    np.testing.assert_array_equal(r.over_zero, [[[3, 0]], [[7, 0]]])  # 1 - 3 clamped at 0
    np.testing.assert_allclose(r.sum, 0.75)
    assert r.max is None and r.meta["prompt_tokens"] == [4, 8]
    with pytest.raises(StatsError, match="swapped"):
        prompt.subtract(full)
    with pytest.raises(StatsError, match="select"):
        full.subtract(prompt.select(["b", "a"]))


# -- persistence ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stats.npz", "stats_dir"])
def test_save_load_roundtrip(tmp_path, name):
    s = make_stats(
        sum=np.random.default_rng(1).normal(size=(3, 2, 4)),
        max=np.ones((3, 2, 4), np.float32),
        meta={"model": "tiny", "n": np.int64(3), "nested": {"a": (1, 2)}},
    )
    path = tmp_path / name
    s.save(path)
    t = ActivationStats.load(path)
    assert t.languages == s.languages and t.meta["model"] == "tiny" and t.meta["nested"] == {"a": [1, 2]}
    for attr in ("tokens", "over_zero", "sum", "max"):
        np.testing.assert_array_equal(getattr(t, attr), getattr(s, attr))
    assert t.sum_sq is None
    if name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:  # NumPy alone opens it
            assert set(z.files) >= {"languages", "tokens", "over_zero", "meta"}
    else:
        m = ActivationStats.load(path, mmap=True)
        assert not m.over_zero.flags.owndata  # backed by the file mapping, not copied
        s.select(["en"]).save(path)  # overwrite an existing directory
        assert ActivationStats.load(path).languages == ["en"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_killed_save_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "s.npz"
    make_stats().save(path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        make_stats(seed=5).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]
    with pytest.raises(TypeError):  # unserialisable meta fails before anything is written
        make_stats(meta={"x": object()}).save(tmp_path / "new.npz")
    assert not (tmp_path / "new.npz").exists()


def test_load_rejects_foreign_files(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(StatsError, match="ActivationStats"):
        ActivationStats.load(tmp_path / "other.npz")
    (tmp_path / "d").mkdir()
    with pytest.raises(StatsError, match="stats.json"):
        ActivationStats.load(tmp_path / "d")


# -- reference activation files ---------------------------------------------------------------------------


def test_from_lape_files_both_styles_and_average_activations(tmp_path):
    rng = np.random.default_rng(0)
    paths = {}
    for i, lang in enumerate(LANGS):
        oz = rng.integers(0, 50, size=(2, 5))
        if i == 1:
            obj = {
                "total_tokens": 50,
                "over_zero": oz.astype(np.int64),
                "average_activations": np.full((2, 5), 0.5, np.float32),
            }
        else:
            obj = {
                "n": 50,
                "over_zero": oz.astype(np.int32),
                "average_activations": np.full((2, 5), 0.5, np.float32),
                "sum1": oz * 1.0,
            }
        paths[lang] = tmp_path / f"activation.{lang}.train.llama-7b"
        torchfile.save(paths[lang], obj)
    s = ActivationStats.from_lape_files(paths, meta={"model": "m"})
    assert s.languages == LANGS and s.over_zero.dtype == np.int64 and s.tokens.tolist() == [50, 50, 50]
    np.testing.assert_allclose(s.mean, 0.5)
    assert s.meta["file_format"] == ["lape", "njunlp"] and s.meta["model"] == "m" and s.meta["hook_point"] == "mlp.act"
    assert s.meta["ignored_keys"] == {"en": ["sum1"], "fr": ["sum1"]}


def test_from_lape_files_errors(tmp_path):
    def write(name, obj):
        torchfile.save(tmp_path / name, obj)
        return tmp_path / name

    good = write("a.pt", {"n": 10, "over_zero": np.ones((2, 3), np.int32)})
    other_shape = write("b.pt", {"n": 10, "over_zero": np.ones((2, 4), np.int32)})
    no_n = write("c.pt", {"over_zero": np.ones((2, 3), np.int32)})
    too_many = write("d.pt", {"n": 1, "over_zero": np.full((2, 3), 5, np.int32)})
    negative = write("e.pt", {"n": 10, "over_zero": -np.ones((2, 3), np.int32)})
    not_dict = write("f.pt", [np.ones(3, np.int64)])
    with pytest.raises(StatsError, match=r"b.pt.*same model"):
        ActivationStats.from_lape_files({"en": good, "zh": other_shape})
    with pytest.raises(StatsError, match=r"c.pt.*'n' \(LAPE\) or 'total_tokens'"):
        ActivationStats.from_lape_files({"en": no_n})
    with pytest.raises(StatsError, match=r"d.pt.*only n=1"):
        ActivationStats.from_lape_files({"en": too_many})
    with pytest.raises(StatsError, match="negative"):
        ActivationStats.from_lape_files({"en": negative})
    with pytest.raises(StatsError, match="expected a dict"):
        ActivationStats.from_lape_files({"en": not_dict})


def test_to_lape_files_roundtrip_through_torch(tmp_path):
    torch = pytest.importorskip("torch")
    s = make_stats(sum=np.ones((3, 2, 4)))
    paths = s.to_lape_files(tmp_path, style="lape")
    d = torch.load(paths[0], weights_only=True)
    assert d["n"] == 100 and d["over_zero"].dtype == torch.int32
    np.testing.assert_array_equal(d["over_zero"].numpy(), s.over_zero[0])
    back = ActivationStats.from_lape_files(dict(zip(s.languages, paths)))
    np.testing.assert_array_equal(back.over_zero, s.over_zero)
    np.testing.assert_allclose(back.sum, s.sum, rtol=1e-6)
    nj = s.to_lape_files(tmp_path / "nj", style="njunlp")
    assert torch.load(nj[1], weights_only=True)["over_zero"].dtype == torch.int64


def test_nju_fixture_full_minus_prompt():
    base = shared_fixtures("nju-mistral-mgsm")
    langs = ["en", "ru", "es", "fr", "de", "zh", "ja", "bn", "th", "sw"]
    full = ActivationStats.from_lape_files({l: base / f"act.{l}.pt" for l in langs})
    prompt = ActivationStats.from_lape_files({l: base / f"pre.{l}.pt" for l in langs})
    assert full.shape == (10, 32, 14336) and full.meta["file_format"] == ["njunlp"]
    response = full.subtract(prompt)
    assert response.tokens[0] == 583_261 - 263_330
    assert response.over_zero.min() == 0
    # Separate passes: a few neurons count more prompt activations than full ones (clamped to 0) ...
    assert ((full.over_zero - prompt.over_zero) < 0).sum() > 0
    # ... and after clamping some response counts exceed the response token count (p > 1).
    assert (response.over_zero.max(axis=(1, 2)) > response.tokens).any()
