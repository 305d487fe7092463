"""Evaluations (jlang.evals): chunked NLL, PPL conventions and matrix, logit lens, token tagger, LSS, steering, CLI."""

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlang
from jlang.masks import NeuronMasks

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny(tiny_dirs):
    """name -> jlang Model for the families the evaluations exercise (untied, tied, soft-capped)."""
    return {name: jlang.load_model(tiny_dirs[name][0], progress=False) for name in ("llama2", "qwen2", "gemma2")}


def _masks(model, languages=("a", "b"), seed=0, rate=0.2):
    rng = np.random.default_rng(seed)
    m = rng.random((len(languages), model.num_layers, model.num_neurons)) < rate
    return NeuronMasks(list(languages), m, {"method": "random"})


def _sentences(seed, n, lo=3, hi=12):
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(4, 131, size=rng.integers(lo, hi))) for _ in range(n)]


# ----------------------------------------------------------------------------- chunked unembedding


@pytest.mark.parametrize("name,chunks", [("llama2", (7, 32, 1000)), ("qwen2", (50,)), ("gemma2", (40,))])
def test_chunked_nll_equals_full_logits(tiny, name, chunks):
    from jlang.models.scoring import Scorer

    model = tiny[name]
    ids = np.random.default_rng(1).integers(3, 131, size=(3, 13)).astype(np.int32)
    full = jax.nn.log_softmax(jnp.asarray(model.logits(ids)), axis=-1)
    expected = np.take_along_axis(np.asarray(full)[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    for chunk in chunks:  # the vocabulary is 131: only 1000 (capped to 131) divides it
        got = Scorer(model, vocab_chunk=chunk).token_logprobs(ids, np.ones_like(ids, bool))
        assert got.dtype == np.float32 and got.shape == (3, 12)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_chunked_top_k_equals_full(tiny):
    from jlang.models.decoder import forward
    from jlang.models.vocab import top_k

    model = tiny["gemma2"]
    ids = np.random.default_rng(2).integers(3, 131, size=(2, 9)).astype(np.int32)
    hidden, _ = forward(model.params, jnp.asarray(ids), model.config, output="hidden")
    ref_v, ref_i = jax.lax.top_k(jnp.asarray(model.logits(ids)), 6)
    for chunk in (6, 10, 131):
        v, i = top_k(model.params, hidden, model.config, 6, chunk)
        np.testing.assert_array_equal(np.asarray(i), np.asarray(ref_i))
        np.testing.assert_allclose(np.asarray(v), np.asarray(ref_v), atol=1e-5)


def test_scorer_compiles_once_per_width_for_all_edits(tiny):
    from jlang import edits as E
    from jlang.models.scoring import Scorer, rows_from_token_lists

    model = tiny["llama2"]
    masks = _masks(model)
    toks = [[1] + list(range(5, 5 + n)) for n in (3, 5, 8, 20)]  # widths 16 and 32
    rows = rows_from_token_lists(toks, [0] * 4, [0] * 4)
    scorer = Scorer(model, vocab_chunk=64)
    base = scorer.row_sums(rows, None, batch_size=2)
    for edits in (E.deactivate(masks, "a"), E.deactivate(masks, "b", value=-1.0), E.amplify(masks, "a", 3.0)):
        assert not np.allclose(scorer.row_sums(rows, edits, batch_size=2), base)
    assert scorer._step._cache_size() == 2


# ----------------------------------------------------------------------------- perplexity


def test_ppl_conventions_hand_computed():
    from jlang.evals.perplexity import PPLResult, aggregate_nll

    # group 0: rows with NLL sums 2 (1 token) and 3 (3 tokens); group 1: one row, 4 over 2 tokens; an empty row
    agg = aggregate_nll(np.array([-2.0, -3.0, -4.0, 0.0]), np.array([1, 3, 2, 0]), np.array([0, 0, 1, 1]), 2)
    np.testing.assert_allclose(agg["nll"], [1.5, 2.0])  # LAPE: mean over rows of the row mean
    np.testing.assert_allclose(agg["nll_token"], [1.25, 2.0])  # token-weighted
    np.testing.assert_array_equal(agg["tokens"], [4, 2])
    np.testing.assert_array_equal(agg["rows"], [2, 1])
    res = PPLResult(
        ["none", "a"],
        ["a", "b"],
        np.array([agg["nll"], [2.5, 2.0]]),
        np.array([agg["nll_token"]] * 2),
        agg["tokens"],
        agg["rows"],
    )
    np.testing.assert_allclose(res.ppl[0], np.exp([1.5, 2.0]))  # NJUNLP: exp of the mean per-prompt NLL
    np.testing.assert_allclose(res.delta_ppl[1], [math.exp(2.5) - math.exp(1.5), 0.0])
    dom = res.diagonal_dominance()
    assert dom["per_language"]["a"]["row_dominant"] and dom["row_dominant"] == 1


def test_ppl_matrix_none_row_is_plain_ppl(tiny, tmp_path):
    from jlang.evals.perplexity import PPLResult, ppl_matrix

    model = tiny["llama2"]
    masks = _masks(model)
    corpus = {"a": _sentences(3, 7), "b": _sentences(4, 5)}
    res = ppl_matrix(model, masks, corpus, batch_size=4, seq_len=32, vocab_chunk=50, progress=False)
    assert res.rows == ["none", "a", "b"] and res.columns == ["a", "b"]
    bos = model.tokenizer.bos_token_id
    for j, lang in enumerate(["a", "b"]):
        toks = [[bos] + t for t in model.tokenizer(corpus[lang], add_special_tokens=False)["input_ids"]]
        ids = np.zeros((len(toks), 16), np.int32)  # right padding: causal, so real positions are unaffected
        for i, t in enumerate(toks):
            ids[i, : len(t)] = t
        logp = np.asarray(jax.nn.log_softmax(jnp.asarray(model.logits(ids)), -1))
        row_nll = [-np.mean(logp[i, np.arange(len(t) - 1), t[1:]]) for i, t in enumerate(toks)]
        np.testing.assert_allclose(res.nll[0, j], np.mean(row_nll), atol=1e-5)
        assert res.sequences[j] == len(corpus[lang])
    assert np.all(res.delta_ppl[0] == 0) and np.all(res.delta_nll[1:] != 0)
    paths = res.save(tmp_path / "ppl")
    assert paths["png"].stat().st_size > 0
    back = PPLResult.from_dict(json.loads(paths["json"].read_text()))
    np.testing.assert_allclose(back.nll, res.nll)
    packed = ppl_matrix(model, masks, corpus, batch_size=4, seq_len=8, mode="pack", vocab_chunk=50, progress=False)
    np.testing.assert_allclose(packed.nll[0], packed.nll_token[0], atol=1e-9)  # equal-length windows


def test_ppl_matrix_errors(tiny):
    from jlang.evals.perplexity import ppl_matrix
    from jlang.masks import MaskShapeError

    model = tiny["llama2"]
    bad = NeuronMasks(["a"], np.zeros((1, 2, 5), bool))
    with pytest.raises(MaskShapeError, match="does not fit"):
        ppl_matrix(model, bad, {"a": ["w5 w6"]}, progress=False)
    with pytest.raises(ValueError, match="not in the corpus"):
        ppl_matrix(model, _masks(model), {"a": ["w5 w6"]}, languages=["a", "zz"], progress=False)


# ----------------------------------------------------------------------------- logit lens and token tags


def test_logit_lens_last_layer_with_final_norm_is_model_top_k(tiny):
    from jlang.evals.logit_lens import lens_top_k

    model = tiny["gemma2"]
    ids = np.random.default_rng(5).integers(3, 131, size=(2, 10)).astype(np.int32)
    valid = np.ones_like(ids, bool)
    valid[1, 7:] = False
    out = lens_top_k(model, ids, valid, k=5, vocab_chunk=40)
    assert out["final_norm"].shape == (model.num_layers, 2, 10, 5)
    _, ref = jax.lax.top_k(jnp.asarray(model.logits(ids)), 5)
    np.testing.assert_array_equal(out["final_norm"][-1, 0], np.asarray(ref)[0])
    np.testing.assert_array_equal(out["final_norm"][-1, 1, :7], np.asarray(ref)[1, :7])  # padding is not attended
    assert not np.array_equal(out["raw"][-1], out["final_norm"][-1])
    last = lens_top_k(model, ids, valid, k=5, where="last", vocab_chunk=40)
    np.testing.assert_array_equal(last["final_norm"][:, 1, 0], out["final_norm"][:, 1, 6])
    only = lens_top_k(model, ids, valid, k=5, vocab_chunk=40, variants=("final_norm",))
    assert list(only) == ["final_norm"]
    np.testing.assert_array_equal(only["final_norm"], out["final_norm"])
    with pytest.raises(ValueError, match="variants"):
        lens_top_k(model, ids, valid, variants=("logits",))


def test_logit_lens_shares(tiny, tmp_path):
    from jlang.evals.logit_lens import logit_lens

    model = tiny["llama2"]
    res = logit_lens(
        model,
        {"a": _sentences(6, 3), "b": _sentences(7, 2)},
        k=3,
        max_texts=3,
        batch_size=2,
        vocab_chunk=64,
        progress=False,
    )
    assert res.shares.shape == (2, 2, model.num_layers, len(res.labels))
    np.testing.assert_allclose(res.shares.sum(-1), 1.0)
    # the tiny vocabulary is "w4".."w130" (Latin, but neither "a" nor "b" is a Latin language) and specials
    assert set(np.array(res.labels)[res.shares.sum((0, 1, 2)) > 0]) <= {"other", "none"}
    assert {"json", "png", "labels_png"} <= set(res.save(tmp_path / "lens"))


def test_token_tagger_scripts_and_frequencies():
    from jlang.evals.token_lang import TokenTagger, text_script

    langs = ["en", "zh", "fr", "es", "ru", "ja", "de", "ar", "ko", "id", "vi", "hi"]
    cases = {
        " the": "Latin?",
        "中文": "Han?",
        "ひらがな": "ja",
        "カタカナ語": "ja",
        "漢字かな": "ja",
        "한국어": "ko",
        " Привет": "ru",
        "مرحبا": "ar",
        "नमस्ते": "hi",
        "123": "none",
        " !?": "none",
        "<bos>": "none",
        "Ελλάδα": "other",
        "": "none",
        "▁": "none",
    }
    tagger = TokenTagger.from_texts(list(cases), langs)
    assert dict(zip(cases, tagger.labels_of(range(len(cases))))) == cases
    assert tagger.labels[-2:] == ["other", "none"] and "Latin?" in tagger.labels
    assert text_script("ab中") == "Latin" and text_script("...") is None
    # frequency resolution of Latin tokens among en/fr/es
    texts = [" the", " le", " de", " rare"]
    # per-language counts [K, V]; shares use counts / language total: " de" is fr .44 vs es .67 vs en .05 -> ambiguous
    counts = np.array([[90, 0, 5, 1], [0, 50, 40, 0], [0, 20, 40, 0]])
    t2 = TokenTagger.from_texts(texts, ["en", "fr", "es"], counts=counts, min_share=0.6, min_count=5)
    assert t2.labels_of(range(4)) == ["en", "fr", "Latin?", "Latin?"]
    np.testing.assert_allclose(
        t2.shares(np.array([[0, 1], [1, -1]])), np.bincount(t2.tags[[0, 1, 1]], minlength=len(t2.labels)) / 3
    )


# ----------------------------------------------------------------------------- LSS


def test_lss_planted_difference():
    from tiny_models import tiny_tokenizer

    from jlang.evals.lss import cloze_items, lss, lss_rate

    class Stub:
        tokenizer = tiny_tokenizer()
        name = "stub"

    rows = [{"a": f"w{i} w{i + 1}", "b": f"w{i + 2} w{i + 3} w{i + 4}", "c": f"w{i + 5}"} for i in range(10, 40, 5)]
    items = cloze_items(rows, "a", "b", n=4) + cloze_items(rows, "a", "c") + cloze_items(rows, "b", "c")
    assert len(items) == 4 + 6 + 6 and items[0].prompt == '"w10 w11" = "'

    def score_fn(token_rows, edits):  # object log-prob = -tokens; the edit plants +log(factor) on target objects
        sums = -token_rows.scored_counts().astype(float)
        if edits is not None:
            sums[0::2] += math.log(edits)
        return sums

    masks = NeuronMasks(["a", "b", "c"], np.zeros((3, 1, 1), bool))
    res = lss(Stub(), masks, items, factors=[0.5, 1.0, 3.0], score_fn=score_fn, edit_fn=lambda t, f: f, progress=False)
    assert res.bases == ["a", "b"] and res.targets == ["b", "c"]
    np.testing.assert_array_equal(res.items, [[4, 6], [0, 6]])
    np.testing.assert_array_equal(res.lss[0][np.isfinite(res.lss[0])], 0.0)
    np.testing.assert_array_equal(res.lss[1][np.isfinite(res.lss[1])], 0.0)  # factor 1: no change, strict >
    np.testing.assert_array_equal(res.lss[2][np.isfinite(res.lss[2])], 1.0)
    np.testing.assert_allclose(res.mean_shift[2, 0, 0], math.log(3.0))
    assert np.isnan(res.lss[2, 1, 0])  # no b -> b pair
    assert lss_rate(np.array([1.0, 0.0, 2.0]), np.array([0.0, 0.0, 3.0])) == pytest.approx(1 / 3)


def test_lss_on_model_factor_one_is_zero(tiny, tmp_path):
    from jlang.evals.lss import cloze_items, lss

    model = tiny["llama2"]
    masks = _masks(model, ("a", "b"), rate=0.3)
    rows = [{"a": s, "b": t} for s, t in zip(_sentences(8, 6), _sentences(9, 6))]
    items = cloze_items(rows, "a", "b") + cloze_items(rows, "b", "a")
    res = lss(model, masks, items, factors=[1.0, 4.0], batch_size=4, vocab_chunk=64, progress=False)
    np.testing.assert_array_equal(res.lss[0][np.isfinite(res.lss[0])], 0.0)
    assert np.all((res.lss[1][np.isfinite(res.lss[1])] >= 0) & (res.lss[1][np.isfinite(res.lss[1])] <= 1))
    assert np.all(res.mean_shift[1][np.isfinite(res.mean_shift[1])] != 0)
    assert {"json", "png", "sweep_png"} <= set(res.save(tmp_path / "lss"))


# ----------------------------------------------------------------------------- steering and identification


def test_steering_bookkeeping_with_stubs(tmp_path):
    from jlang.evals.steering import Activation, SteeringResult, run_steering
    from jlang.stats import ActivationStats

    langs = ["a", "b", "c"]
    m = np.zeros((3, 2, 6), bool)
    for k in range(3):
        m[k, :, 2 * k : 2 * k + 2] = True
    masks = NeuronMasks(langs, m)
    K, L, F = m.shape
    stats = ActivationStats(
        languages=langs,
        tokens=np.full(K, 10),
        over_zero=np.zeros((K, L, F), np.int64),
        sum=np.full((K, L, F), 5.0),
        sum_sq=np.zeros((K, L, F)),
        max=np.zeros((K, L, F), np.float32),
    )

    def generate(prompts, edits):
        """Answers in the activated language for the first prompt only; in the prompt's language otherwise."""
        src = prompts[0].split(":")[0]
        if edits is None:
            return [f"{src} text" for _ in prompts]
        shift = np.asarray(edits.shift)
        active = [l for k, l in enumerate(langs) if (shift[:, 2 * k : 2 * k + 2] > 0).all()]
        deact = [l for k, l in enumerate(langs) if (np.asarray(edits.scale)[:, 2 * k : 2 * k + 2] == 0).all()]
        if active:
            return [f"{active[0]} text"] + [f"{src} text"] * (len(prompts) - 1)
        assert deact == [src]
        return ["" for _ in prompts]  # deactivated only: no language

    identify = lambda texts: [t.split(" ")[0] if t else "none" for t in texts]
    prompts = {l: [f"{l}:{i}" for i in range(4)] for l in langs}
    res = run_steering(
        masks,
        prompts,
        generate=generate,
        identify=identify,
        activation=Activation("additive", 2.0),
        stats=stats,
        progress=False,
    )
    expected = np.full((3, 3), 0.25)
    np.fill_diagonal(expected, np.nan)
    np.testing.assert_array_equal(res.success, expected)
    np.testing.assert_array_equal(res.baseline_same, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(res.deactivated_same, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.nan_to_num(res.control, nan=-1), np.where(np.eye(3, dtype=bool), -1, 0.0))
    np.testing.assert_array_equal(res.lift, res.success)
    assert res.per_target()["a"] == {"success": 0.25, "control": 0.0, "lift": 0.25}
    assert res.counts["a->b"] == {"a": 3, "b": 1} and res.counts["a|deactivate"] == {"none": 4}
    assert res.mean_success() == pytest.approx(0.25)
    assert res.generations["c->a"][0] == {"prompt": "c:0", "output": "a text", "language": "a"}
    back = SteeringResult.from_dict(json.loads(res.save(tmp_path / "steer")["json"].read_text()))
    np.testing.assert_array_equal(back.success, res.success)
    np.testing.assert_array_equal(back.control, res.control)


def test_identifier_accuracy():
    from jlang.evals.langid import Py3LangID, identifier_accuracy

    stub = lambda texts: [t[:2] for t in texts]
    acc = identifier_accuracy(stub, {"en": ["en x", "fr y", "en z", "en w"], "fr": ["fr a", "fr b"]})
    assert acc["per_language"] == {"en": 0.75, "fr": 1.0}
    assert acc["macro"] == pytest.approx(0.875) and acc["micro"] == pytest.approx(5 / 6)
    assert acc["confusion"]["en"] == {"en": 3, "fr": 1} and acc["n"] == {"en": 4, "fr": 2}
    lid = Py3LangID(["en", "fr", "ru", "ja"])
    assert lid(
        [
            "Ce champ ne peut pas être vide.",
            "Это поле не может быть пустым.",
            "このフィールドは必須です。",
            "This field cannot be empty.",
            "",
            " 12 ",
        ]
    ) == ["fr", "ru", "ja", "en", "none", "none"]
    with pytest.raises(ValueError, match="does not know"):
        Py3LangID(["en", "xx"])


# ----------------------------------------------------------------------------- CLI


def test_cli_ppl_and_lss(tiny_dirs, tmp_path, capsys):
    from jlang.cli.evals import EVAL_COMMANDS

    path = tiny_dirs["llama2"][0]
    model = jlang.load_model(path, progress=False)
    masks_path = _masks(model).save(tmp_path / "masks.npz")
    corpus = tmp_path / "corpus"
    (corpus / "heldout").mkdir(parents=True)
    for lang, seed in (("a", 10), ("b", 11)):
        (corpus / "heldout" / f"{lang}.txt").write_text("\n".join(_sentences(seed, 4)) + "\n")
    parallel = tmp_path / "par.jsonl"
    parallel.write_text(
        "".join(json.dumps({"text": {"a": s, "b": t}}) + "\n" for s, t in zip(_sentences(12, 3), _sentences(13, 3)))
    )
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for register in EVAL_COMMANDS:
        register(sub)
    common = [
        "--model",
        str(path),
        "--masks",
        str(masks_path),
        "--corpus",
        str(corpus),
        "--vocab-chunk",
        "64",
        "--no-progress",
    ]
    args = parser.parse_args(["ppl", *common, "--out", str(tmp_path / "o"), "--batch-size", "2", "--seq-len", "32"])
    assert args.func(args) == 0
    assert "diagonal dominates" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "ppl.json").read_text())["rows"] == ["none", "a", "b"]
    args = parser.parse_args(
        ["lss", *common, "--out", str(tmp_path / "o"), "--parallel", str(parallel), "--factors", "2"]
    )
    assert args.func(args) == 0
    assert (tmp_path / "o" / "lss.png").is_file()
    assert sorted(p.__name__ for p in EVAL_COMMANDS) == [
        "add_lens_parser",
        "add_lss_parser",
        "add_ppl_parser",
        "add_steer_parser",
    ]


# ----------------------------------------------------------------------------- the reproduction experiment


def _experiment_module():
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("lape_reproduction", root / "experiments" / "lape_reproduction.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name], root


def test_reproduction_config_is_strict():
    from jlang.config import ConfigError, load_config

    mod, root = _experiment_module()
    cfg = load_config(root / "configs" / "lape_reproduction.yaml", mod.ReproductionConfig)
    assert cfg.ppl.edit_value == 0.0 and cfg.ppl.split == "heldout" and cfg.lape.identify.method == "lape"
    assert cfg.steering.template == "Q: {text}\nA:"
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(root / "configs" / "lape_reproduction.yaml", mod.ReproductionConfig, ["ppl.bogus=1"])


def test_reproduction_end_to_end_on_tiny_model(tiny_dirs, tmp_path):
    mod, _ = _experiment_module()
    path = tiny_dirs["llama2"][0]
    corpus = tmp_path / "corpus"
    for split, seed in (("train", 20), ("heldout", 30)):
        (corpus / split).mkdir(parents=True)
        for k, lang in enumerate(("en", "fr")):
            (corpus / split / f"{lang}.txt").write_text("\n".join(_sentences(seed + k, 12)) + "\n")
    (corpus / "parallel").mkdir()
    (corpus / "parallel" / "heldout.jsonl").write_text(
        "".join(json.dumps({"text": {"en": a, "fr": b}}) + "\n" for a, b in zip(_sentences(40, 3), _sentences(41, 3)))
    )
    out = tmp_path / "out"
    sets = [
        f"out={out}",
        f"lape.out={tmp_path / 'lape'}",
        f"lape.model.source={path}",
        f"lape.corpus.source={corpus}",
        "lape.corpus.languages=[en, fr]",
        "lape.stats.seq_len=16",
        "lape.identify.top_rate=0.05",
        "ppl.batch_size=4",
        "ppl.seq_len=16",
        "ppl.vocab_chunk=64",
        "steering.prompts_per_language=2",
        "steering.max_new_tokens=3",
        "lss.items=2",
        "lss.factors=[2.0]",
        "lss.alphas=[1.0]",
        "lss.bases=null",
        "lss.batch_size=4",
        "lens.max_texts=2",
        "lens.k=3",
    ]
    assert mod.main(["configs/lape_reproduction.yaml", *sum((["--set", s] for s in sets), [])]) == 0
    text = (out / "report.md").read_text()
    for needle in (
        "Deactivation perplexity",
        "Does the diagonal dominate?",
        "Language steering",
        "Identifier accuracy",
        "Language Steering Score",
        "Logit lens",
    ):
        assert needle in text
    assert {p.name for p in out.iterdir()} >= {
        "ppl.json",
        "ppl.png",
        "steering.json",
        "lss_scale.json",
        "lss_additive.json",
        "lens.json",
        "report.md",
    }
    # a second run reuses every result (no model work beyond loading) and rewrites the same report
    assert (
        mod.main(["configs/lape_reproduction.yaml", *sum((["--set", s] for s in sets + ["reuse_results=true"]), [])])
        == 0
    )
    section = lambda t: t.split("## Deactivation perplexity")[1].split("## Wall time")[0]
    assert section((out / "report.md").read_text()) == section(text)
    assert "reused" in (out / "report.md").read_text()
