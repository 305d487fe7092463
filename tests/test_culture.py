"""Culture neurons (jlang.analysis.culture) and the demonstration culture corpus (jlang.data.corpora.culture).

Known answers: hand-made masks (compound / pure / generic by set algebra), statistics
with planted neurons that fire for one language or one culture only (LAPE must find
them and the masks must sort them), and hand-made perplexities.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from jlang.analysis.culture import (
    CultureError,
    CulturePPL,
    culture_masks,
    culture_ppl,
    identify_culture_neurons,
)
from jlang.masks import NeuronMasks
from jlang.stats import ActivationStats


def _masks(names, shape, cells, meta=None):
    m = np.zeros((len(names),) + shape, bool)
    for k, l, j in cells:
        m[k, l, j] = True
    return NeuronMasks(names, m, dict(meta or {"hook_point": "mlp.act"}))


def test_compound_pure_generic_by_set_algebra(tmp_path):
    L = _masks(["de", "ru"], (2, 6), [(0, 0, 1), (0, 1, 2), (1, 0, 3)])
    C = _masks(
        ["de_DE", "ru_RU"],
        (2, 6),
        [(0, 0, 1), (0, 0, 5), (0, 1, 4), (1, 0, 3), (1, 0, 5), (1, 1, 4)],
    )
    cm = culture_masks(L, C, {"de_DE": "de", "ru_RU": "ru"})
    assert np.flatnonzero(cm.compound["de_DE"].ravel()).tolist() == [1]  # (0,1): de language ∧ de culture
    assert np.argwhere(cm.pure["de_DE"]).tolist() == [[0, 5], [1, 4]]
    assert np.argwhere(cm.compound["ru_RU"]).tolist() == [[0, 3]]
    assert np.argwhere(cm.pure["ru_RU"]).tolist() == [[0, 5], [1, 4]]
    assert np.argwhere(cm.generic["generic"]).tolist() == [
        [0, 5],
        [1, 4],
    ]  # in both pure sets
    for c in ("de_DE", "ru_RU"):  # compound and pure split C_c
        assert not (cm.compound[c] & cm.pure[c]).any()
        np.testing.assert_array_equal(cm.compound[c] | cm.pure[c], C[c])
    assert cm.counts()["pure"] == {"de_DE": 2, "ru_RU": 2}
    from jlang.analysis.culture import CultureMasks

    cm.save(tmp_path / "masks")
    back = CultureMasks.load(tmp_path / "masks", {"de_DE": "de", "ru_RU": "ru"})
    assert all(back.kind(k) == cm.kind(k) for k in cm.KINDS)
    combined = cm.combined()
    assert combined.languages[:2] == ["language:de", "language:ru"] and combined.languages[-1] == "generic:generic"
    assert "| de_DE | de | 3 | 2 | 1 | 2 | 0.67 |" in cm.summary_table()


def test_pure_removes_every_language_of_a_culture():
    L = _masks(["fr", "de", "it"], (1, 8), [(0, 0, 0), (1, 0, 1), (2, 0, 2)])
    C = _masks(
        ["ch", "at"],
        (1, 8),
        [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 0, 7), (1, 0, 1), (1, 0, 6)],
    )
    cm = culture_masks(L, C, {"ch": ["fr", "de", "it"], "at": "de"})  # Swiss culture written in three languages
    assert np.flatnonzero(cm.pure["ch"][0]).tolist() == [7]
    assert np.flatnonzero(cm.compound["ch"][0]).tolist() == [0, 1, 2]
    assert np.flatnonzero(cm.pure["at"][0]).tolist() == [6]
    assert not cm.generic.masks.any()


def test_culture_mask_errors():
    L = _masks(["de"], (2, 4), [(0, 0, 0)])
    C = _masks(["de_DE"], (2, 4), [(0, 0, 1)])
    with pytest.raises(CultureError, match="no culture given"):
        culture_masks(L, C, {})
    with pytest.raises(CultureError, match=r"\['de_DE'\] have no language"):
        culture_masks(L, C, {"fr_FR": "de"})
    with pytest.raises(CultureError, match=r"\['fr'\] are not in the language masks"):
        culture_masks(L, C, {"de_DE": "fr"})
    with pytest.raises(CultureError, match="same model"):
        culture_masks(L, _masks(["de_DE"], (2, 5), []), {"de_DE": "de"})
    # the released *_transformers.py counted the MLP output: refused by name
    out_masks = _masks(["de_DE"], (2, 4), [], meta={"hook_point": "mlp.out"})
    with pytest.raises(CultureError, match="mlp.out"):
        culture_masks(L, out_masks, {"de_DE": "de"})


def _planted_stats(names, planted, L=2, F=150, tokens=1000, seed=0, meta=None):
    """Statistics with uniform background firing and neurons that fire (p = 0.9) for one entry only."""
    rng = np.random.default_rng(seed)
    p = np.broadcast_to(rng.uniform(0.2, 0.4, (1, L, F)), (len(names), L, F)).copy()  # same for all: max entropy
    for (l, j), k in planted.items():
        p[:, l, j] = 0.001
        p[k, l, j] = 0.9
    over = np.round(p * tokens).astype(np.int64)
    return ActivationStats(
        names,
        np.full(len(names), tokens),
        over,
        meta=dict(meta or {"hook_point": "mlp.act"}),
    )


def test_identify_culture_neurons_sorts_planted_neurons():
    # language corpora: (0,5) fires only on German text, (1,7) only on French, (0,13) only on English
    lang = _planted_stats(["de", "fr", "en", "ja"], {(0, 5): 0, (1, 7): 1, (0, 13): 2})
    # culture corpora: (0,5) fires only on German-culture text (a German *language* neuron: compound);
    # (1,9) only on French-culture text and (0,11) only on US-culture text (pure culture neurons)
    cult = _planted_stats(["de_DE", "fr_FR", "en_US"], {(0, 5): 0, (1, 9): 1, (0, 11): 2}, seed=1)
    cm = identify_culture_neurons(lang, cult, {"de_DE": "de", "fr_FR": "fr", "en_US": "en"})
    assert cm.language.languages == [
        "de",
        "fr",
        "en",
    ]  # LAPE on the cultures' languages only (ja left out)
    assert np.argwhere(cm.language["de"]).tolist() == [[0, 5]]
    assert np.argwhere(cm.culture["fr_FR"]).tolist() == [[1, 9]]
    assert np.argwhere(cm.compound["de_DE"]).tolist() == [[0, 5]] and not cm.pure["de_DE"].any()
    assert np.argwhere(cm.pure["fr_FR"]).tolist() == [[1, 9]] and not cm.compound["fr_FR"].any()
    assert np.argwhere(cm.pure["en_US"]).tolist() == [[0, 11]]
    assert cm.meta["lape"]["top_rate"] == 0.01
    with pytest.raises(CultureError, match="mlp.out"):
        identify_culture_neurons(
            lang,
            _planted_stats(["a_A", "b_B"], {}, meta={"hook_point": "mlp.out"}),
            {"a_A": "de", "b_B": "fr"},
        )


def _ppl_result(rows, cols, ppl):
    from jlang.evals.perplexity import PPLResult

    nll = np.log(np.asarray(ppl, np.float64))
    return PPLResult(
        rows=rows,
        columns=cols,
        nll=nll,
        nll_token=nll,
        tokens=np.ones(len(cols), np.int64),
        sequences=np.ones(len(cols), np.int64),
    )


def test_culture_ppl_matrices_and_own_vs_other():
    cols = ["culture:de_DE", "culture:en_US", "language:de", "language:en"]
    rows = [
        "none",
        "pure:de_DE",
        "pure:en_US",
        "language:de",
        "language:en",
        "generic:generic",
    ]
    ppl = [
        [10, 10, 10, 10],
        [16, 11, 12, 10],  # de_DE pure: +6 own culture, +1 other, +2 own language, 0 other language
        [10, 14, 10, 11],  # en_US pure: +4 own, 0 other, +1 own language, 0 other language
        [13, 10, 20, 10],  # de language: own culture (de_DE) +3, own language +10
        [10, 12, 10, 18],
        [11, 11, 10, 10],
    ]
    res = CulturePPL(_ppl_result(rows, cols, ppl), {"de_DE": ["de"], "en_US": ["en"]})
    r, c, m = res.matrix("pure", "culture")
    assert r == ["de_DE", "en_US"] and c == ["de_DE", "en_US"]
    np.testing.assert_allclose(m, [[6, 1], [0, 4]])
    o = res.own_vs_other("pure")
    assert o == pytest.approx(
        {
            "own_culture": 5.0,
            "other_cultures": 0.5,
            "own_language": 1.5,
            "other_languages": 0.0,
        }
    )
    ol = res.own_vs_other("language")
    assert ol["own_culture"] == pytest.approx(2.5) and ol["own_language"] == pytest.approx(9.0)
    assert res.own_vs_other("generic") == pytest.approx({"culture_text": 1.0, "language_text": 0.0})
    assert "| de_DE | 6.00 | 1.00 |" in res.table("pure")
    assert res.own_dominant("pure") == (2, 2)
    assert res.own_vs_other("pure", "delta_nll")["own_culture"] == pytest.approx((np.log(1.6) + np.log(1.4)) / 2)


def test_culture_ppl_runs_on_a_tiny_model(tiny_model_dir, tmp_path):
    import jlang
    from jlang.data.sources import Corpus

    model = jlang.load_model(str(tiny_model_dir), progress=False)
    F, Ly = model.num_neurons, model.num_layers
    lang = _masks(["de", "en"], (Ly, F), [(0, 0, 0), (1, 0, 1)])
    cult = _masks(["de_DE", "en_US"], (Ly, F), [(0, 0, 0), (0, 1, 2), (1, 1, 3)])
    cm = culture_masks(lang, cult, {"de_DE": "de", "en_US": "en"})
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    text = [" ".join(words[i:] + words[:i]) for i in range(8)]
    corpus = Corpus({"de_DE": text, "en_US": text[::-1]})
    res = culture_ppl(
        model, cm, corpus, Corpus({"de": text, "en": text}), batch_size=4, seq_len=16, mode="pad", progress=False
    )
    assert res.result.rows[0] == "none" and len(res.result.rows) == 1 + 2 + 2 + 2 + 2 + 1
    assert res.columns_of("culture") == ["culture:de_DE", "culture:en_US"]
    assert np.all(res.result.delta_ppl[0] == 0)
    paths = res.save(tmp_path / "culture_ppl")
    assert set(json.loads(paths["json"].read_text())["kinds"]) == {
        "language",
        "culture",
        "compound",
        "pure",
        "generic",
    }


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    pytest.importorskip("torch")
    from tiny_models import family_configs, save_tiny

    path = tmp_path_factory.mktemp("tiny_culture") / "llama3"
    save_tiny(family_configs()["llama3"], path)
    return path


# ----------------------------------------------------------------------------- demonstration corpus


def test_demonstration_culture_corpus(tmp_path):
    pytest.importorskip("faker")
    from jlang.data.corpora.culture import build_culture_corpus, culture_corpus
    from jlang.data.langinfo import text_script_share

    cultures = {"de_DE": "de", "ru_RU": "ru", "ja_JP": "ja", "en_GB": "en"}
    manifest = build_culture_corpus(tmp_path / "a", cultures, train_lines=12, heldout_lines=3, seed=0)
    build_culture_corpus(tmp_path / "b", cultures, train_lines=12, heldout_lines=3, seed=0)
    assert manifest["what"].startswith("DEMONSTRATION")
    for c, script in (
        ("de_DE", "Latin"),
        ("ru_RU", "Cyrillic"),
        ("ja_JP", "Japanese"),
        ("en_GB", "Latin"),
    ):
        train = (tmp_path / "a" / "train" / f"{c}.txt").read_text(encoding="utf-8").splitlines()
        held = (tmp_path / "a" / "heldout" / f"{c}.txt").read_text(encoding="utf-8").splitlines()
        assert len(train) == 12 and len(held) == 3 and not set(train) & set(held)
        assert all(text_script_share(line, script) > 0.8 for line in train), c
        assert (
            train == (tmp_path / "b" / "train" / f"{c}.txt").read_text(encoding="utf-8").splitlines()
        )  # deterministic
    corpus = culture_corpus("heldout", cultures, path=tmp_path / "a")
    assert corpus.languages == ("de_DE", "ru_RU", "ja_JP", "en_GB")


def test_demonstration_corpus_rejects_unknown_locale(tmp_path):
    pytest.importorskip("faker")
    from jlang.data.corpora.culture import CultureCorpusError, build_culture_corpus

    with pytest.raises(CultureCorpusError, match="no locale"):
        build_culture_corpus(tmp_path, {"xx_YY": "xx"}, train_lines=2, heldout_lines=1)


# ----------------------------------------------------------------------------- CLI


def test_culture_cli_from_masks(tmp_path, capsys):
    from jlang.cli import main

    _masks(["de", "ru"], (2, 6), [(0, 0, 1), (1, 0, 3)]).save(tmp_path / "lang.npz")
    _masks(["de_DE", "ru_RU"], (2, 6), [(0, 0, 1), (0, 0, 5), (1, 0, 5)]).save(tmp_path / "cult.npz")
    rc = main(
        [
            "culture",
            "--language",
            str(tmp_path / "lang.npz"),
            "--culture",
            str(tmp_path / "cult.npz"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    assert "| de_DE | de | 2 | 1 | 1 | 1 | 0.50 |" in capsys.readouterr().out
    generic = NeuronMasks.load(tmp_path / "out" / "masks" / "generic.npz")
    assert np.argwhere(generic["generic"]).tolist() == [[0, 5]]
