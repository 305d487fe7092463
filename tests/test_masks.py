"""jlang.masks.NeuronMasks: summaries, .npz and LAPE .pt round trips, the published LAPE masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shared_data import shared_fixtures

from jlang.io import torchfile
from jlang.masks import MaskError, MaskShapeError, NeuronMasks, UnknownLanguageError

LAPE_LANGS = ["en", "zh", "fr", "es", "vi", "id", "ja"]
# model -> (layers, intermediate size); methods.md §1.3
PUBLISHED = {
    "LLaMA-2-7B": (32, 11008),
    "LLaMA-2-13B": (40, 13824),
    "LLaMA-2-70B": (80, 28672),
    "Mistral-7B": (32, 14336),
    "BLOOM-7B": (30, 16384),
    "OPT-6.7B": (32, 16384),
    "Phi-2-2.7B": (32, 10240),
}


def small() -> NeuronMasks:
    """3 languages, 2 layers, 5 neurons, worked by hand below."""
    indices = [
        [np.array([0, 1]), np.array([4])],  # a: (0,0) (0,1) (1,4)
        [np.array([1, 2]), np.array([4])],  # b: (0,1) (0,2) (1,4)
        [np.array([1]), np.array([], dtype=np.int64)],  # c: (0,1)
    ]
    return NeuronMasks.from_indices(indices, ["a", "b", "c"], num_neurons=5, meta={"method": "hand", "model": "toy"})


def test_summaries_by_hand():
    m = small()
    assert m.shape == (3, 2, 5)
    np.testing.assert_array_equal(m.counts(), [[2, 1], [2, 1], [1, 0]])
    assert m.unique_count() == 4  # (0,0) (0,1) (0,2) (1,4)
    assert m.appear() == [0, 2, 1, 1]  # (0,0),(0,2) in one; (1,4) in two; (0,1) in three
    np.testing.assert_array_equal(np.argwhere(m.general()), [[0, 1]])
    j = m.jaccard()
    np.testing.assert_allclose(j, [[1, 2 / 4, 1 / 3], [2 / 4, 1, 1 / 3], [1 / 3, 1 / 3, 1]])
    np.testing.assert_array_equal(m["b"][0], [False, True, True, False, False])
    table = m.summary_table()
    assert all(lang in table for lang in "abc") and "4 unique neurons" in table and "1 in all" in table
    with pytest.raises(UnknownLanguageError, match=r"unknown language 'zz'.*\['a', 'b', 'c'\]"):
        m["zz"]
    assert m.select(["c", "a"]).languages == ["c", "a"]


def test_jaccard_empty_is_nan():
    m = NeuronMasks(["a", "b"], np.zeros((2, 1, 3), bool))
    assert np.isnan(m.jaccard()).all()


def test_check_fits():
    m = small()
    m.check_fits(2, 5, model="toy")
    with pytest.raises(MaskShapeError, match=r"2 layers x 5 neurons.*made for toy.*llama with 32 layers x 11008"):
        m.check_fits(32, 11008, model="llama")


def test_validation():
    with pytest.raises(MaskError, match=r"\[K, L, F\]"):
        NeuronMasks(["a"], np.zeros((2, 3), bool))
    with pytest.raises(MaskError, match="2 languages on axis 0"):
        NeuronMasks(["a"], np.zeros((2, 1, 3), bool))
    with pytest.raises(MaskError, match="boolean"):
        NeuronMasks(["a"], np.full((1, 1, 3), 0.5))
    with pytest.raises(MaskShapeError, match="does not fit num_neurons=3"):
        NeuronMasks.from_indices([[np.array([3])]], ["a"], num_neurons=3)
    with pytest.raises(MaskError, match="3 language lists but only 2"):
        NeuronMasks.from_indices([[np.array([0])]] * 3, ["a", "b"])


def test_npz_roundtrip_opens_with_numpy_alone(tmp_path):
    m = small()
    path = m.save(tmp_path / "mask.npz")
    with np.load(path, allow_pickle=False) as z:
        assert z["masks"].dtype == np.bool_ and z["masks"].shape == (3, 2, 5)
        assert z["languages"].dtype.kind == "U" and z["languages"].tolist() == ["a", "b", "c"]
        assert json.loads(str(z["meta"]))["model"] == "toy"
    back = NeuronMasks.load(path)
    assert back == m and back.meta == m.meta
    np.savez(tmp_path / "other.npz", masks=np.zeros(3))
    with pytest.raises(MaskError, match="NeuronMasks"):
        NeuronMasks.load(tmp_path / "other.npz")


def test_lape_pt_roundtrip_through_torch(tmp_path):
    torch = pytest.importorskip("torch")
    m = small()
    path = m.to_lape_pt(tmp_path / "mask.pth")
    loaded = torch.load(path, weights_only=True)
    assert len(loaded) == 3 and all(len(row) == 2 for row in loaded)
    assert [[t.tolist() for t in row] for row in loaded] == [[[0, 1], [4]], [[1, 2], [4]], [[1], []]]
    assert all(t.dtype == torch.int64 for row in loaded for t in row)
    back = NeuronMasks.from_lape_pt(path, ["a", "b", "c"], num_neurons=5)
    assert back == m
    # and torch's own files read back the same
    torch.save([[torch.tensor(t) for t in row] for row in m.to_indices()], tmp_path / "t.pth")
    assert NeuronMasks.from_lape_pt(tmp_path / "t.pth", ["a", "b", "c"], num_neurons=5) == m


def test_from_lape_pt_rejects_non_mask_content(tmp_path):
    bad = {
        "dict.pt": {"over_zero": np.zeros((2, 3), np.int64)},
        "strings.pt": [["a", "b"]],
        "nested.pt": [[[np.array([1])]]],
        "floats.pt": [[np.array([0.5, 1.5])]],
        "ragged.pt": [[np.array([1]), np.array([2])], [np.array([1])]],
        "matrix.pt": [[np.zeros((2, 2), np.int64)]],
    }
    for name, obj in bad.items():
        torchfile.save(tmp_path / name, obj)
        with pytest.raises(MaskError, match=name):
            NeuronMasks.from_lape_pt(tmp_path / name, ["a", "b"])
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(MaskError, match="junk.pt"):
        NeuronMasks.from_lape_pt(tmp_path / "junk.pt", ["a"])


@pytest.mark.parametrize("model", list(PUBLISHED))
def test_published_lape_masks(model):
    path = shared_fixtures("lape-published", f"{model}.neuron.pth")
    num_layers, inter = PUBLISHED[model]
    m = NeuronMasks.from_lape_pt(path, LAPE_LANGS, num_neurons=inter)
    m.check_fits(num_layers, inter, model=model)
    assert m.unique_count() == round(0.01 * num_layers * inter)  # LAPE selects exactly 1% of L·I
    if model == "LLaMA-2-7B":
        assert dict(zip(LAPE_LANGS, m.counts().sum(1).tolist())) == {
            "en": 95,
            "zh": 583,
            "fr": 1022,
            "es": 838,
            "vi": 836,
            "id": 1068,
            "ja": 582,
        }
        assert round(100 * (m.language_count() > 1).sum() / m.unique_count(), 1) == 32.0
    if model in ("LLaMA-2-70B", "Mistral-7B", "BLOOM-7B", "OPT-6.7B", "Phi-2-2.7B"):  # six lists in the file
        assert m.meta["missing_languages"] == ["ja"] and not m["ja"].any()
        assert any("bincount" in note for note in m.meta["notes"])
    if model == "Mistral-7B":
        assert m.counts().sum(1).tolist()[:6] == [76, 1190, 919, 838, 1554, 1445]


def test_published_mask_inferred_size_and_plot(tmp_path):
    path = shared_fixtures("lape-published", "Mistral-7B.neuron.pth")
    m = NeuronMasks.from_lape_pt(path, LAPE_LANGS)
    assert m.meta["num_neurons_inferred"] and m.num_neurons <= 14336 and m.num_layers == 32
    png = m.plot_heatmap(tmp_path / "heat.png", title="Mistral-7B LAPE")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["heat.png"]
