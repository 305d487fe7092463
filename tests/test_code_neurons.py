"""Programming-language neurons: planted neurons found by LAPE and the fixed-count variant, keyword tagging,
the keyword logit lens against direct computations, and the experiment end to end on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jlang.analysis.code_lens import (
    KeywordTagger,
    keyword_forms,
    keyword_lens,
    middle_window,
    token_keywords,
)
from jlang.analysis.code_neurons import (
    identify_code_neurons,
    layer_bands,
    shared_counts,
    specificity,
    top_neurons,
)
from jlang.stats import ActivationStats

LANGS = ["python", "javascript", "rust", "english"]


# ----------------------------------------------------------------------------- hand-made statistics


def planted_stats(seed=0, L=3, F=60, n=10_000):
    """Random activation probabilities in [0.3, 0.6] plus planted neurons with known owners:

    (1, 7): fires only on rust (p = 0.95); (2, 3): python and javascript (0.9, 0.9), never the others;
    (0, 11): english only, but weaker (0.7).
    """
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.3, 0.6, (len(LANGS), L, F))
    p[:, 1, 7] = [0, 0, 0.95, 0]
    p[:, 2, 3] = [0.9, 0.9, 0, 0]
    p[:, 0, 11] = [0, 0, 0, 0.7]
    tokens = np.full(len(LANGS), n, np.int64)
    return ActivationStats(LANGS, tokens, np.round(p * n).astype(np.int64))


def test_planted_neurons_found_by_lape_and_fixed_count():
    stats = planted_stats()
    neurons = identify_code_neurons(stats, top_rate=3 / 180, num_per_language=1)
    lape_m, fixed = neurons.lape, neurons.fixed_count
    # LAPE selects round(0.0167 * 180) = 3 neurons: the three planted ones, each with exactly its owners
    assert lape_m.unique_count() == 3
    assert [l for l in LANGS if lape_m[l][1, 7]] == ["rust"]
    assert [l for l in LANGS if lape_m[l][2, 3]] == ["python", "javascript"]
    assert [l for l in LANGS if lape_m[l][0, 11]] == ["english"]
    # fixed count: one neuron per language, each language's own lowest-entropy candidate
    assert [int(fixed[l].sum()) for l in LANGS] == [1, 1, 1, 1]
    assert fixed["rust"][1, 7] and fixed["python"][2, 3] and fixed["javascript"][2, 3] and fixed["english"][0, 11]
    assert shared_counts(fixed)[0, 1] == 1  # python and javascript share (2, 3)


def test_fixed_count_gives_every_language_the_same_size():
    stats = planted_stats(seed=1)
    neurons = identify_code_neurons(stats, num_per_language=5)
    assert [int(neurons.fixed_count[l].sum()) for l in LANGS] == [5, 5, 5, 5]
    # ... which plain LAPE does not: its sizes follow the entropy ranking
    assert len({int(neurons.lape[l].sum()) for l in LANGS}) > 1
    assert not neurons.fixed_count.meta["short_languages"]
    # asking for more neurons than a language has candidates keeps what there is and says so
    many = identify_code_neurons(stats, num_per_language=10_000).fixed_count
    assert set(many.meta["short_languages"]) == set(LANGS)


def test_specificity_top_neurons_and_layer_bands():
    stats = planted_stats()
    fixed = identify_code_neurons(stats, num_per_language=1).fixed_count
    spec = specificity(stats, fixed)
    assert spec["rust"]["p_own"] == pytest.approx(0.95) and spec["rust"]["p_other_mean"] == 0.0
    assert spec["rust"]["ratio"] == float("inf")
    assert spec["python"]["p_other_mean"] == pytest.approx(0.3)  # (0.9 + 0 + 0) / 3
    top = top_neurons(stats, fixed, "rust")[0]
    assert (top["layer"], top["neuron"], top["entropy"]) == (1, 7, 0.0)
    names, shares = layer_bands(fixed)
    assert names == ["L0-0", "L1-1", "L2-2"]
    assert shares[LANGS.index("rust")].tolist() == [0.0, 1.0, 0.0]
    assert shares[LANGS.index("english")].tolist() == [1.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- keyword tagging


def test_keyword_tagging_on_known_tokens():
    langs = ["python", "c", "cpp", "javascript", "html", "css", "rust", "english"]
    assert token_keywords("def", langs) == ["python"]
    assert token_keywords("▁def".replace("▁", " "), langs) == ["python"]  # leading space of a decoded piece
    assert token_keywords("#include", langs) == ["c", "cpp"]
    assert token_keywords("namespace", langs) == ["cpp"]
    assert token_keywords(" <div", langs) == ["html"]
    assert token_keywords("</span", langs) == ["html"]
    assert token_keywords("DIV", langs) == ["html"]  # HTML is case-insensitive
    assert token_keywords("fn", langs) == ["rust"]
    assert token_keywords("None", langs) == ["python", "rust"]
    assert token_keywords("none", langs) == ["css"]  # Python's None is case-sensitive, CSS's none is not
    assert token_keywords(" The", langs) == ["english"]
    assert set(token_keywords("if", langs)) == {
        "python",
        "c",
        "cpp",
        "javascript",
        "rust",
        "english",
    }
    assert (
        token_keywords("{", langs) == [] and token_keywords("   ", langs) == [] and token_keywords("foo", langs) == []
    )
    assert keyword_forms("  @media ") == ("@media", "media")
    with pytest.raises(ValueError, match="no keyword table"):
        KeywordTagger.from_texts(["x"], ["cobol"])


def test_keyword_tagger_exclusive_and_shares():
    texts = ["<pad>", "def", "if", "fn", "the", "and", "{", "struct"]
    tagger = KeywordTagger.from_texts(texts, ["python", "rust", "c", "english"], special_ids={0})
    m = {t: tagger.labels_of(i) for i, t in enumerate(texts)}
    assert m == {
        "<pad>": [],
        "def": ["python"],
        "if": ["python", "rust", "c", "english"],
        "fn": ["rust"],
        "the": ["english"],
        "and": ["python", "english"],
        "{": [],
        "struct": ["rust", "c"],
    }
    ex = {t: [l for j, l in enumerate(tagger.languages) if tagger.exclusive[i, j]] for i, t in enumerate(texts)}
    # exclusive: one programming language only; English only when no programming language claims the word
    assert ex["def"] == ["python"] and ex["fn"] == ["rust"] and ex["the"] == ["english"]
    assert ex["if"] == [] and ex["struct"] == [] and ex["and"] == ["python"]
    np.testing.assert_allclose(tagger.shares(np.array([[1, 1], [3, 6]])), [0.5, 0.25, 0.0, 0.0])
    assert middle_window(list(range(10)), 4) == [3, 4, 5, 6] and middle_window([1, 2], 5) == [1, 2]


# ----------------------------------------------------------------------------- tiny model

KEYWORD_WORDS = [
    "def",
    "return",
    "None",
    "import",
    "fn",
    "let",
    "mut",
    "function",
    "const",
    "var",
    "div",
    "href",
    "the",
    "and",
    "if",
    "for",
    "include",
    "struct",
    "class",
    "self",
]


def code_tokenizer(vocab_size):
    """Word-level tokenizer whose first words are keywords, then made-up words w{i}."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w in KEYWORD_WORDS:
        vocab[w] = len(vocab)
    while len(vocab) < vocab_size:
        vocab[f"w{len(vocab)}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


@pytest.fixture(scope="module")
def tiny_code_model(tmp_path_factory):
    """A tiny random Llama with the keyword tokenizer, saved as a Hugging Face directory, and loaded."""
    pytest.importorskip("torch")
    from tiny_models import build_torch_model, family_configs

    import jlang

    config = family_configs()["llama2"]
    path = tmp_path_factory.mktemp("tiny_code") / "llama2"
    build_torch_model(config).save_pretrained(path)
    code_tokenizer(config.vocab_size).save_pretrained(path)
    return path, jlang.load_model(path, progress=False)


def test_lens_with_k_equal_to_vocabulary_gives_vocabulary_shares(tiny_code_model):
    """Every token is in the top-V, so each share is the fraction of the vocabulary in that table."""
    _, model = tiny_code_model
    V = model.config.vocab_size
    texts = {
        "python": ["def w40 w41 return None w42 w43 import w44"],
        "rust": ["fn w50 let mut w51 w52 w53"],
    }
    res = keyword_lens(model, texts, k=V, seq_len=16, vocab_chunk=V, progress=False)
    tagger = KeywordTagger.from_tokenizer(model.tokenizer, ["python", "rust"], vocab_size=V)
    assert res.keyword_languages == ["python", "rust"]
    expected = tagger.member.mean(axis=0)  # [K]
    np.testing.assert_allclose(res.shares, np.broadcast_to(expected, res.shares.shape), atol=1e-12)
    np.testing.assert_allclose(
        res.exclusive,
        np.broadcast_to(tagger.exclusive.mean(axis=0), res.shares.shape),
        atol=1e-12,
    )
    assert res.positions.tolist() == [9, 7]  # every token after BOS
    # the text shares are the keyword shares of the texts' own tokens
    np.testing.assert_allclose(res.text_shares[0], [4 / 9, 2 / 9])  # def return None import | return None
    np.testing.assert_allclose(res.text_shares[1], [0, 3 / 7])


def test_lens_last_layer_top1_is_the_models_prediction(tiny_code_model, tmp_path):
    _, model = tiny_code_model
    texts = {
        "python": ["w30 def w31 return w32 w33", "import w34 None self w35 class"],
        "rust": ["fn w60 let w61 mut w62 w63 struct"],
    }
    res = keyword_lens(model, texts, k=1, seq_len=32, batch_size=2, progress=False)
    tagger = KeywordTagger.from_tokenizer(model.tokenizer, ["python", "rust"], vocab_size=model.config.vocab_size)
    tok = model.tokenizer
    for p, lang in enumerate(texts):
        hits, n = np.zeros(2), 0
        for text in texts[lang]:
            ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
            top1 = model.logits(np.array([ids])).argmax(-1)[0, 1:]  # positions after BOS
            hits += tagger.member[top1].sum(axis=0)
            n += top1.size
        np.testing.assert_allclose(res.shares[p, -1], hits / n, atol=1e-12)
    paths = res.save(tmp_path / "lens")
    assert all(p.is_file() for p in paths.values())
    from jlang.analysis.code_lens import KeywordLensResult

    back = KeywordLensResult.from_dict(json.loads((tmp_path / "lens.json").read_text()))
    np.testing.assert_allclose(back.shares, res.shares)
    assert back.peak_layers() == res.peak_layers()


A_WORDS = [f"w{i}" for i in range(30, 60)]  # the "python" files' words
B_WORDS = [f"w{i}" for i in range(60, 95)]  # the "javascript" files' words
C_WORDS = [f"w{i}" for i in range(95, 131)]  # English


def plant_neuron(model, words, layer=1, neuron=7, dim=0):
    """A copy of `model` whose neuron (layer, neuron) fires exactly on the tokens of `words`.

    Residual dimension `dim` holds +4 for those tokens and -4 for every other token: embeddings set so,
    and no attention or MLP output writes into it. The planted neuron's gate reads only `dim`, and nothing
    else reads it (q, k, v, up and every other gate are zero there), so no other neuron can learn the
    language from it.
    """
    import jax.numpy as jnp

    from jlang.models.model import Model, decoder_from_params

    params = {k: np.array(v) for k, v in model.params.items()}
    ids = model.tokenizer.convert_tokens_to_ids(words)
    params["embed"][:, dim] = -4.0
    params["embed"][ids, dim] = 4.0
    params["layers.o"][:, :, dim] = 0.0
    params["layers.down"][:, :, dim] = 0.0
    for name in ("layers.q", "layers.k", "layers.v", "layers.up", "layers.gate"):
        params[name][:, dim, :] = 0.0
    params["layers.gate"][layer, :, neuron] = 0.0
    params["layers.gate"][layer, dim, neuron] = 1.0
    params["layers.mlp_norm"][:, dim] = 1.0
    decoder = decoder_from_params(model.config, {k: jnp.asarray(v) for k, v in params.items()})
    return Model(decoder, model.tokenizer, name="planted", source="test")


def word_corpus(tmp_path, n_files=24):
    """A code corpus built from a fake site-packages whose .py and .js files hold the A and B words."""
    from test_code_corpus import write_dist

    from jlang.data.corpora.code import build_code_corpus

    rng = np.random.default_rng(0)
    lines = lambda words: "\n".join(" ".join(rng.choice(words, 8)) for _ in range(12)) + "\n"
    files = {f"wordpkg/m{i}.py": lines(A_WORDS) for i in range(n_files)}
    files.update({f"wordpkg/s{i}.js": lines(B_WORDS) for i in range(n_files)})
    site = tmp_path / "site"
    write_dist(site, "wordpkg", files, "License-Expression: BSD-3-Clause")
    english = [" ".join(rng.choice(C_WORDS, 12)) for _ in range(80)]
    out = tmp_path / "corpus"
    build_code_corpus(
        out,
        ["python", "javascript", "english"],
        english=english,
        site_dirs=[site],
        stdlib=False,
        python_include=False,
        cargo_registry=None,
        min_chars=50,
        min_documents=5,
        min_heldout_documents=1,
        heldout_fraction=0.2,
        english_doc_chars=200,
        progress=False,
    )
    return out


def test_planted_neuron_found_end_to_end(tiny_code_model, tmp_path):
    """Corpus from fake package files -> statistics on a tiny model -> both selections find the planted neuron."""
    from jlang.data.corpora.code import code_corpus
    from jlang.stats.collect import collect_stats

    _, model = tiny_code_model
    planted = plant_neuron(model, A_WORDS)
    corpus_dir = word_corpus(tmp_path)
    stats = collect_stats(
        planted, code_corpus("train", path=corpus_dir), batch_size=4, seq_len=32, mode="pack", progress=False
    )
    assert stats.languages == ["python", "javascript", "english"]
    p = stats.over_zero[:, 1, 7] / stats.tokens
    assert p[0] > 0.9 and p[1] == 0 and p[2] == 0  # only python tokens (not BOS) fire it
    neurons = identify_code_neurons(stats, num_per_language=1)  # LAPE: round(0.01 * 3 * 83) = 2 neurons
    assert neurons.fixed_count["python"][1, 7] and neurons.fixed_count["python"].sum() == 1
    assert not neurons.fixed_count["javascript"][1, 7] and not neurons.fixed_count["english"][1, 7]
    assert [l for l in stats.languages if neurons.lape[l][1, 7]] == ["python"]
    assert top_neurons(stats, neurons.lape, "python")[0]["entropy"] == 0.0
    # the unplanted model has no such neuron
    plain = collect_stats(
        model, code_corpus("train", path=corpus_dir), batch_size=4, seq_len=32, mode="pack", progress=False
    )
    q = plain.over_zero[:, 1, 7] / plain.tokens
    assert min(q) > 0.0


def test_experiment_end_to_end_on_tiny_model(tiny_code_model, tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("code_neurons_experiment", root / "experiments" / "code_neurons.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(sys.modules[spec.name])
    mod = sys.modules[spec.name]

    path, _ = tiny_code_model
    corpus_dir = word_corpus(tmp_path)
    out = tmp_path / "out"
    sets = [
        f"out={out}",
        f"model.source={path}",
        f"corpus.source={corpus_dir}",
        "corpus.languages=[python, javascript, english, rust]",
        "stats.batch_size=4",
        "stats.seq_len=32",
        "stats.max_tokens_per_language=2000",
        "identify.num_per_language=3",
        "identify.top_rate=0.02",
        "ppl.seq_len=16",
        "ppl.max_tokens_per_language=64",
        "ppl.vocab_chunk=64",
        "lens.texts_per_language=2",
        "lens.seq_len=12",
        "lens.k=3",
        "lens.vocab_chunk=64",
    ]
    argv = [str(root / "configs" / "code_neurons.yaml")] + [a for s in sets for a in ("--set", s)]
    assert mod.main(argv) == 0
    text = (out / "report.md").read_text()
    for needle in (
        "Language-specific neurons",
        "Deactivation perplexity",
        "Logit lens",
        "Left out",
        "rust",
    ):
        assert needle in text
    assert {p.name for p in out.iterdir()} >= {
        "stats.npz",
        "masks_lape.npz",
        "masks_fixed.npz",
        "ppl.json",
        "ppl.png",
        "lens.json",
        "lens.png",
        "lens_own.png",
        "overlap.png",
        "summary.json",
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["languages"] == ["python", "javascript", "english"] and summary["left_out"] == ["rust"]
    assert summary["fixed_count_neurons"] == {
        "python": 3,
        "javascript": 3,
        "english": 3,
    }
    # a second run reuses the statistics; with reuse_results also the PPL matrix and the lens, same numbers
    assert mod.main(argv) == 0
    assert "reused" in (out / "report.md").read_text()
    assert mod.main(argv + ["--set", "reuse_results=true"]) == 0
    again = (out / "report.md").read_text()
    section = lambda t: t.split("## Deactivation perplexity")[1].split("## Wall time")[0]
    assert section(again) == section(text)
    assert "Reused results, from their own run: statistics" in again and "keyword lens" in again
    with pytest.raises(SystemExit, match="rust"):
        mod.main(argv + ["--set", "corpus.require_all=true"])
    # the keyword lens from the command line, with a language's neurons deactivated
    from jlang.cli import main

    lens_argv = [
        "code-lens",
        "--model",
        str(path),
        "--corpus",
        str(corpus_dir),
        "--out",
        str(tmp_path / "cli"),
        "--k",
        "3",
        "--texts",
        "2",
        "--seq-len",
        "12",
        "--vocab-chunk",
        "64",
        "--no-progress",
    ]
    assert main(lens_argv + ["--masks", str(out / "masks_fixed.npz"), "--deactivate", "python"]) == 0
    saved = json.loads((tmp_path / "cli" / "code_lens.json").read_text())
    assert saved["languages"] == ["python", "javascript", "english"] and saved["meta"]["edited"]
    with pytest.raises(SystemExit, match="needs --masks"):
        main(lens_argv + ["--deactivate", "python"])


@pytest.mark.slow
def test_experiment_on_default_model(tmp_path):
    """The experiment's one command on the packaged default model and the machine's code corpus (small budgets)."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("code_neurons_experiment", root / "experiments" / "code_neurons.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)
    spec.loader.exec_module(sys.modules[spec.name])
    mod = sys.modules[spec.name]
    out = tmp_path / "run"
    sets = [
        f"out={out}",
        "stats.max_tokens_per_language=2048",
        "ppl.texts_per_language=2",
        "lens.texts_per_language=2",
        "lens.seq_len=24",
    ]
    assert mod.main([str(root / "configs" / "code_neurons.yaml")] + [a for s in sets for a in ("--set", s)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"python", "c", "javascript", "html", "css", "english"} <= set(summary["languages"])
    assert summary["lape_neurons"] == round(0.01 * 18 * 2048)
    assert all(n == 50 for n in summary["fixed_count_neurons"].values())
    text = (out / "report.md").read_text()
    assert "Deactivation perplexity" in text and "Logit lens" in text
