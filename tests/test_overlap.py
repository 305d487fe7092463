"""Overlap analyses (jlang.analysis.overlap), the language table and code-mixing (jlang.data.corpora.codemix).

Every test has an answer known in advance: hand-made sets, planted neurons, planted
block structure, or small parallel corpora with a known translation of each word.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from jlang.analysis.overlap import (
    average_linkage,
    cluster_order,
    group_relation,
    layer_iou,
    mask_activation,
    overall_iou,
    overlap,
    pairwise_iou,
    specialization,
    specialized_neurons,
)
from jlang.data import langinfo
from jlang.masks import NeuronMasks
from jlang.stats import ActivationStats

# ----------------------------------------------------------------------------- IoU


def test_pairwise_iou_hand_made():
    a = np.zeros(10, bool)
    b = np.zeros(10, bool)
    a[[0, 1, 2]] = True
    b[[1, 2, 3]] = True
    empty = np.zeros(10, bool)
    m = pairwise_iou(np.stack([a, b, empty, empty]))
    assert m[0, 1] == m[1, 0] == pytest.approx(2 / 4)
    assert m[0, 0] == 1.0
    assert m[0, 2] == 0.0  # a vs empty: union 3, intersection 0
    assert np.isnan(m[2, 3])  # both empty: nothing to compare


def test_layer_and_overall_iou():
    masks = np.zeros((2, 3, 4), bool)
    masks[0, 0, [0, 1]] = True
    masks[1, 0, [1, 2]] = True  # layer 0: 1/3
    masks[0, 2, 3] = True
    masks[1, 2, 3] = True  # layer 2: 1/1
    per = layer_iou(masks)
    assert per.shape == (3, 2, 2)
    assert per[0, 0, 1] == pytest.approx(1 / 3)
    assert np.isnan(per[1, 0, 1])
    assert per[2, 0, 1] == 1.0
    assert overall_iou(masks)[0, 1] == pytest.approx(2 / 4)  # {00,01,23} vs {01,02,23}
    with pytest.raises(ValueError, match=r"\[K, L, F\]"):
        overall_iou(masks[0])


# ----------------------------------------------------------------------------- clustering


def _blocks(groups: list[int], within: float = 0.6, between: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = np.asarray(groups)
    s = np.where(g[:, None] == g[None, :], within, between) + rng.uniform(0, 0.02, (len(g), len(g)))
    s = (s + s.T) / 2
    np.fill_diagonal(s, 1.0)
    return s


@pytest.mark.parametrize("use_scipy", [True, False])
def test_cluster_order_puts_planted_groups_together(use_scipy):
    if use_scipy:
        pytest.importorskip("scipy")
    groups = [0, 1, 2, 0, 1, 2, 0, 1]
    order = cluster_order(_blocks(groups), use_scipy=use_scipy)
    assert sorted(order) == list(range(len(groups)))
    seq = [groups[i] for i in order]
    # every group occupies one contiguous run of the order
    assert len([i for i in range(1, len(seq)) if seq[i] != seq[i - 1]]) == 2


def test_numpy_upgma_equals_scipy():
    pytest.importorskip("scipy")
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    from jlang.analysis.overlap import distance_matrix

    rng = np.random.default_rng(1)
    for _ in range(30):
        k = int(rng.integers(3, 12))
        s = rng.random((k, k))
        s = (s + s.T) / 2
        d = distance_matrix(s)
        np.testing.assert_allclose(average_linkage(d), linkage(squareform(d, checks=False), method="average"))
        assert cluster_order(s, use_scipy=True) == cluster_order(s, use_scipy=False)


# ----------------------------------------------------------------------------- script / family


def test_group_relation_planted():
    labels = ["Latin"] * 4 + ["Cyrillic"] * 4
    s = _blocks([0, 0, 0, 0, 1, 1, 1, 1], within=0.5, between=0.1)
    rel = group_relation(s, labels, permutations=999, seed=0)
    assert rel["same_pairs"] == 12 and rel["diff_pairs"] == 16
    assert rel["mean_same"] > 0.5 and rel["mean_diff"] < 0.12
    assert rel["r"] > 0.95
    assert rel["p_value"] < 0.05  # only 35 distinct splits of 8 languages into 4 + 4: p >= 1/35
    # the opposite planting: more sharing across scripts -> negative r, large p
    rel2 = group_relation(1.0 - s, labels, permutations=999, seed=0)
    assert rel2["r"] < -0.95 and rel2["p_value"] > 0.5
    # unknown labels are left out; all-same labels give no test
    rel3 = group_relation(s, ["Latin"] * 4 + [None] * 4, permutations=99)
    assert rel3["unknown"] == 4 and np.isnan(rel3["r"]) and np.isnan(rel3["p_value"])


def test_langinfo_table():
    for code in (
        "en",
        "zh",
        "fr",
        "es",
        "ru",
        "ja",
        "de",
        "ar",
        "ko",
        "id",
        "vi",
        "hi",
    ):
        assert langinfo.info(code) is not None, code
    for code in (
        "it",
        "pt",
        "nl",
        "da",
        "fa",
        "bn",
        "th",
        "sw",
        "tr",
        "fi",
        "he",
        "uk",
    ):
        assert langinfo.info(code) is not None, code
    assert langinfo.script_of("zh_CN") == "Han"
    assert langinfo.script_of("fr_en_0.25") == "Latin"
    assert langinfo.family_of("hi") == "Indo-European" and langinfo.family_of("hi", "branch") == "Indo-Aryan"
    assert langinfo.family_of("xx") is None
    labels, same = langinfo.same_group(["fr", "es", "ru", "xx"], "script")
    assert labels == ["Latin", "Latin", "Cyrillic", None]
    assert same[0][1] is True and same[0][2] is False and same[0][3] is None
    assert langinfo.text_script_share("Привет, мир", "Cyrillic") == 1.0
    assert langinfo.text_script_share("Привет world", "Cyrillic") == pytest.approx(6 / 11)


def test_overlap_on_planted_masks(tmp_path):
    # fr-es share neurons, ru-uk share neurons, nothing across: clusters and the script test must find it
    langs = ["fr", "ru", "es", "uk"]
    m = np.zeros((4, 3, 50), bool)
    m[[0, 2], 1, 0:10] = True
    m[[1, 3], 2, 20:30] = True
    m[0, 0, 40] = m[1, 0, 41] = m[2, 0, 42] = m[3, 0, 43] = True  # one own neuron each
    res = overlap(NeuronMasks(langs, m, {"method": "planted"}), permutations=99)
    assert res.overall[0, 2] == pytest.approx(10 / 12) and res.overall[0, 1] == 0.0
    names = [langs[i] for i in res.order]
    assert {frozenset(names[:2]), frozenset(names[2:])} == {
        frozenset({"fr", "es"}),
        frozenset({"ru", "uk"}),
    }
    assert res.relations["script"]["r"] == pytest.approx(1.0)
    assert res.relations["family"]["same_pairs"] == 6  # all Indo-European
    np.testing.assert_array_equal(res.sizes[:, 1], [10, 0, 10, 0])
    paths = res.save(tmp_path / "overlap")
    assert json.loads(paths["json"].read_text())["cluster_order"] == names
    assert paths["png"].stat().st_size > 1000 and paths["layers_png"].stat().st_size > 1000


# ----------------------------------------------------------------------------- specialisation (Aya / Tan et al.)


def test_specialized_neurons_cumulative_threshold():
    counts = np.array([[[5, 50, 10, 30, 5]]], dtype=np.int64)  # shares after sorting: .5 .8 .9 .95 1
    kept = specialized_neurons(counts, 0.9)
    np.testing.assert_array_equal(kept[0, 0], [False, True, True, True, False])
    np.testing.assert_array_equal(specialized_neurons(counts, 0.5)[0, 0], [False, True, False, False, False])
    assert not specialized_neurons(np.zeros((1, 1, 5)), 0.9).any()  # no activity: nothing kept
    with pytest.raises(ValueError, match="threshold"):
        specialized_neurons(counts, 0.0)


def test_specialization_finds_a_planted_neuron_and_removes_shared_ones():
    rng = np.random.default_rng(0)
    k, l, f = 3, 2, 40
    counts = rng.integers(20, 40, (k, l, f))  # background
    counts[:, :, 0] = 1000  # fires for every direction -> kept by all -> removed as shared
    counts[:, 1, 7] = 0
    counts[1, 1, 7] = 800  # fires only for direction 1 in layer 1 (the planted neuron)
    res = specialization(counts, ["aa", "bb", "cc"], threshold=0.9)
    assert res.masks[1, 1, 7] and not res.masks[0, 1, 7] and not res.masks[2, 1, 7]
    assert not res.masks[:, :, 0].any()
    kept_by_all = specialized_neurons(counts, 0.9, remove_shared=False).all(axis=0)
    assert kept_by_all[:, 0].all()
    np.testing.assert_array_equal(res.shared_removed, kept_by_all.sum(axis=1))
    assert res.per_layer.shape == (l, k, k)
    # keeping the shared neuron changes the sets
    assert specialization(counts, ["aa", "bb", "cc"], threshold=0.9, remove_shared=False).masks[:, :, 0].all()


def test_specialization_from_stats_uses_over_zero():
    over = np.zeros((2, 1, 6), np.int64)
    over[0, 0] = [90, 5, 3, 1, 1, 0]
    over[1, 0] = [0, 1, 1, 3, 5, 90]
    stats = ActivationStats(["x", "y"], np.array([100, 100]), over, meta={"hook_point": "mlp.act"})
    res = specialization(stats, threshold=0.9)
    np.testing.assert_array_equal(np.flatnonzero(res.masks[0, 0]), [0])
    np.testing.assert_array_equal(np.flatnonzero(res.masks[1, 0]), [5])
    assert res.per_layer[0, 0, 1] == 0.0
    assert res.meta["count"] == "a > 0"


def test_mask_activation():
    over = np.zeros((2, 1, 4), np.int64)
    over[0, 0] = [10, 0, 5, 0]  # set "s0": 10 tokens
    over[1, 0] = [0, 10, 0, 10]
    stats = ActivationStats(["s0", "s1"], np.array([10, 10]), over)
    m = np.zeros((2, 1, 4), bool)
    m[0, 0, [0, 2]] = True
    m[1, 0, [1, 3]] = True
    act = mask_activation(stats, NeuronMasks(["a", "b"], m))
    np.testing.assert_allclose(act, [[0.75, 0.0], [0.0, 1.0]])
    assert mask_activation(stats, NeuronMasks(["a", "b"], m), per_layer=True).shape == (
        2,
        2,
        1,
    )


# ----------------------------------------------------------------------------- code-mixing


def _toy_parallel(n: int = 12) -> list[dict[str, str]]:
    """fr/en rows built from a known dictionary, words in varied order, so Dice can learn it."""
    fr_en = {
        "chat": "cat",
        "chien": "dog",
        "maison": "house",
        "rouge": "red",
        "grand": "big",
        "petit": "small",
    }
    words = list(fr_en)
    rows = []
    rng = np.random.default_rng(0)
    for _ in range(n):
        pick = list(rng.choice(words, size=3, replace=False))
        rows.append(
            {
                "fr": " ".join(pick),
                "en": " ".join(fr_en[w] for w in reversed(pick)),
                "zh": "猫狗",
            }
        )
    return rows, fr_en


def test_codemix_substitutes_known_translations():
    from jlang.data.corpora.codemix import build_codemix

    rows, fr_en = _toy_parallel()
    cm = build_codemix(rows, ["fr"], ["en"], [0.0, 1 / 3, 1.0], seed=3)
    assert cm.sets["fr-en@0"] == cm.sets["fr"]
    for mixed, base in zip(cm.sets["fr-en@1"], cm.sets["fr"]):
        assert mixed == " ".join(fr_en[w] for w in base.split())  # every word replaced by its translation
    for mixed, base in zip(cm.sets["fr-en@0.333333"], cm.sets["fr"]):
        changed = [(m, b) for m, b in zip(mixed.split(), base.split()) if m != b]
        assert len(changed) == 1 and fr_en[changed[0][1]] == changed[0][0]
    assert cm.info["fr-en@0.333333"]["replaced_share"] == pytest.approx(1 / 3)


def test_codemix_is_deterministic_and_seeded():
    from jlang.data.corpora.codemix import build_codemix

    rows, _ = _toy_parallel(30)
    a = build_codemix(rows, ["fr"], ["en"], [0.5], seed=0)
    b = build_codemix(rows, ["fr"], ["en"], [0.5], seed=0)
    c = build_codemix(rows, ["fr"], ["en"], [0.5], seed=1)
    assert a.sets == b.sets
    assert a.sets["fr-en@0.5"] != c.sets["fr-en@0.5"]


def test_codemix_units_and_spacing():
    from jlang.data.corpora.codemix import build_codemix, units

    assert [("页码小于 1")[a:b] for a, b in units("页码小于 1", "zh")] == [
        "页",
        "码",
        "小",
        "于",
        "1",
    ]
    assert [("JSONとして正しい")[a:b] for a, b in units("JSONとして正しい", "ja")] == [
        "JSON",
        "として",
        "正",
        "しい",
    ]
    hindi = "हिन्दी भाषा"
    assert [hindi[a:b] for a, b in units(hindi, "hi")] == [
        "हिन्दी",
        "भाषा",
    ]  # vowel signs stay in the word
    rows = [
        {"zh": "猫狗", "en": "cat dog"},
        {"zh": "猫", "en": "cat"},
        {"zh": "狗", "en": "dog"},
    ]
    cm = build_codemix(rows, ["zh"], ["en"], [1.0])
    assert cm.sets["zh-en@1"][0] == "cat dog"  # inserted English words are kept apart


def test_codemix_errors():
    from jlang.data.corpora.codemix import CodeMixError, build_codemix

    rows, _ = _toy_parallel()
    with pytest.raises(CodeMixError, match="no parallel row"):
        build_codemix(rows, ["fr"], ["de"])
    with pytest.raises(CodeMixError, match="ratio"):
        build_codemix(rows, ["fr"], ["en"], [1.5])


def test_codemix_on_the_default_parallel_corpus():
    """The real parallel split: ratios are met (within the linkable words) and text is in both languages."""
    pytest.importorskip("polib")
    from jlang.data.corpora.codemix import build_codemix, read_parallel

    try:
        rows = read_parallel()
    except (
        OSError,
        ImportError,
        RuntimeError,
    ) as e:  # the corpus packages are not installed
        pytest.skip(f"default corpus unavailable: {e}")
    cm = build_codemix(rows, ["fr"], ["en", "ja"], max_rows=60)
    shares = [cm.info[f"fr-en@{r:g}"]["replaced_share"] for r in (0.25, 0.5, 0.75)]
    assert shares == sorted(shares) and abs(shares[1] - 0.5) < 0.1
    assert any(langinfo.text_script_share(t, "Japanese") > 0.2 for t in cm.sets["fr-ja@0.5"])


# ----------------------------------------------------------------------------- CLI


def test_overlap_cli(tmp_path, capsys):
    from jlang.cli import main

    m = np.zeros((3, 2, 20), bool)
    m[0, 0, :5] = m[1, 0, 2:7] = m[2, 1, 10:15] = True
    NeuronMasks(["de", "nl", "ja"], m, {"method": "planted"}).save(tmp_path / "masks.npz")
    over = np.ones((3, 2, 20), np.int64)
    ActivationStats(["de", "nl", "ja"], np.array([5, 5, 5]), over).save(tmp_path / "stats.npz")
    out = tmp_path / "out"
    rc = main(
        [
            "overlap",
            str(tmp_path / "masks.npz"),
            "--stats",
            str(tmp_path / "stats.npz"),
            "--out",
            str(out),
            "--permutations",
            "9",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "de-nl 0.429" in text  # 3 shared of 7
    assert (out / "overlap.png").is_file() and (out / "specialization.json").is_file()
