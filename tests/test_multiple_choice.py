"""Multiple choice from parallel data (jlang.evals.multiple_choice): the builder, conditions, scoring with planted
log-probs, option log-probs on a tiny model against full logits, `jlang mc`, and experiments/arithmetic.py."""

import argparse
import json

import numpy as np
import pytest

from jlang.evals.multiple_choice import (
    Condition,
    MCItem,
    MCResult,
    build_items,
    option_rows,
    predict,
    prompt_text,
    run_multiple_choice,
)
from jlang.masks import NeuronMasks


def _rows(n=30):
    """Parallel rows over made-up words; rows 3 and 7 share a French text, row 5 has no French, row 9 is identical."""
    rows = [
        {
            "en": f"w{4 + i} w{50 + i}",
            "fr": f"w{100 + i % 30} w{70 + i % 25}",
            "de": f"w{20 + i}",
        }
        for i in range(n)
    ]
    rows[7]["fr"] = rows[3]["fr"]
    del rows[5]["fr"]
    rows[9]["fr"] = rows[9]["en"]
    return rows


# ----------------------------------------------------------------------------- builder


def test_build_items_answer_once_and_deterministic():
    rows = _rows()
    items = build_items(rows, "en", "fr", options=4, seed=3)
    assert [it.row for it in items] == [i for i in range(30) if i not in (5, 9)]  # no French / same text skipped
    pool = {r["fr"] for r in rows if "fr" in r}
    for it in items:
        assert len(it.options) == 4 and len(set(it.options)) == 4
        assert it.options[it.answer] == rows[it.row]["fr"] and it.question == rows[it.row]["en"]
        assert sum(o == rows[it.row]["fr"] for o in it.options) == 1  # the right answer exactly once
        assert set(it.options) <= pool
    # rows 3 and 7 share a translation: it never comes back as a distractor of either
    assert sum(o == rows[3]["fr"] for it in items if it.row in (3, 7) for o in it.options) == 2
    assert len({it.answer for it in items}) == 4  # every position is used
    assert build_items(rows, "en", "fr", options=4, seed=3) == items
    build_items(rows, "en", "de", seed=3)  # other pairs do not disturb this pair's draw
    assert build_items(rows, "en", "fr", options=4, seed=3) == items
    assert build_items(rows, "en", "fr", options=4, seed=4) != items
    assert build_items(rows, "en", "fr", n=5, seed=3) == items[:5]
    rows[2]["en"] = "w4 " * 20  # 60 characters: too long a question for max_chars=12
    short = build_items(rows, "en", "fr", seed=3, max_chars=12)
    assert all(len(t) <= 12 for it in short for t in (it.question, *it.options)) and 2 not in {it.row for it in short}
    assert len(short) == len(items) - 1 - sum(len(r.get("fr", "")) > 12 for r in rows)
    with pytest.raises(ValueError, match="distinct texts"):
        build_items(rows[:3], "en", "fr", options=4)
    with pytest.raises(ValueError, match="differ"):
        build_items(rows, "en", "en")
    with pytest.raises(ValueError, match="at least 2"):
        build_items(rows, "en", "fr", options=1)


def test_condition_parse():
    assert Condition.parse("none") == Condition("none")
    assert Condition.parse("deactivate") == Condition("deactivate", 0.0)
    assert Condition.parse("deactivate=-1.5").name == "deactivate=-1.5"
    assert Condition.parse("scale=2") == Condition("scale", 2.0, "target")
    assert Condition.parse("source:additive=1").name == "source:additive=1"
    assert Condition.parse("target:scale=10").name == "scale=10"
    for bad, msg in (
        ("scale", "needs a value"),
        ("foo=1", "kind must be"),
        ("none=1", "no value"),
        ("scale=abc", "not a number"),
        ("scale=inf", "finite"),
    ):
        with pytest.raises(ValueError, match=msg):
            Condition.parse(bad)


def test_predict_norms_and_ties():
    lp = np.array([[-10.0, -6.0, -9.0, -12.0]])
    tokens = np.array([[10, 2, 9, 4]])
    chars = np.array([[20, 3, 18, 6]])
    assert predict(lp, tokens, chars, "sum").tolist() == [1]
    assert predict(lp, tokens, chars, "token").tolist() == [0]  # -1 ties -1: the first option wins
    assert predict(lp, tokens, chars, "char").tolist() == [0]  # -0.5 ties -0.5: the first option wins
    with pytest.raises(ValueError, match="norm"):
        predict(lp, tokens, chars, "bits")


# ----------------------------------------------------------------------------- planted scores


class _Stub:
    name = "stub"

    def __init__(self):
        from tiny_models import tiny_tokenizer

        self.tokenizer = tiny_tokenizer()


def test_run_multiple_choice_planted_scores(tmp_path):
    rows = _rows()
    items = (
        build_items(rows, "en", "fr", n=6, seed=0)
        + build_items(rows, "de", "fr", n=4)
        + build_items(rows, "fr", "en", n=5)
    )
    answers = np.array([it.answer for it in items])
    O = 4

    def edit_fn(cond, lang):
        return (cond.kind, lang)

    def score_fn(token_rows, edits):
        """Every scored token costs 1 nat; the correct option gets +1000, or -1000 when the French neurons are off."""
        sums = -token_rows.scored_counts().astype(float)
        correct = (np.arange(len(token_rows)) % O) == answers[token_rows.group]
        sums[correct] += -1000.0 if edits == ("deactivate", "fr") else 1000.0
        return sums

    res = run_multiple_choice(
        _Stub(),
        None,
        items,
        conditions=["none", "deactivate", "source:deactivate"],
        score_fn=score_fn,
        edit_fn=edit_fn,
        progress=False,
    )
    assert res.pairs == [("en", "fr"), ("de", "fr"), ("fr", "en")]
    assert res.conditions == ["none", "deactivate=0", "source:deactivate=0"]
    np.testing.assert_array_equal(res.counts(), [6, 4, 5])
    # deactivating the answer language (fr) sinks the correct option of en->fr and de->fr, not of fr->en;
    # deactivating the question language (fr) sinks it only for fr->en
    np.testing.assert_array_equal(res.accuracy("sum"), [[1, 1, 1], [0, 0, 1], [1, 1, 0]])
    np.testing.assert_array_equal(res.accuracy("token"), res.accuracy("sum"))
    np.testing.assert_allclose(res.mean_accuracy("sum"), [1.0, 5 / 15, 10 / 15])
    assert res.flips("sum") == {
        "none": (0, 0),
        "deactivate=0": (10, 0),
        "source:deactivate=0": (5, 0),
    }
    assert res.flips("sum", reference="deactivate=0")["none"] == (0, 10)
    assert res.chance() == 0.25 and res.logprob.shape == (3, 15, 4) and np.isfinite(res.logprob).all()
    assert res.tokens[0].tolist() == [
        2,
        2,
        2,
        2,
    ]  # " wX wY": two word tokens per option
    assert "| en→fr | 6 | 1.00 | 0.00 | 1.00 |" in res.table("sum")
    paths = res.save(tmp_path / "mc")
    back = MCResult.from_dict(json.loads(paths["json"].read_text()))
    assert back.items == res.items and back.pairs == res.pairs
    np.testing.assert_array_equal(back.accuracy("char"), res.accuracy("char"))
    assert paths["png"].stat().st_size > 0
    with pytest.raises(ValueError, match="need masks"):
        run_multiple_choice(
            _Stub(),
            None,
            items,
            conditions=["scale=2"],
            score_fn=score_fn,
            progress=False,
        )
    with pytest.raises(ValueError, match="repeat"):
        run_multiple_choice(
            _Stub(),
            None,
            items,
            conditions=["none", "none"],
            score_fn=score_fn,
            progress=False,
        )


def test_option_rows_score_only_the_option():
    tok = _Stub().tokenizer
    item = MCItem("en", "fr", "w5 w6", ("w7", "w8 w9", "w10 w11 w12", "w13"), 1, 0)
    assert prompt_text(item) == "English: w5 w6\nFrench:"
    rows = option_rows(tok, [item])
    assert rows.scored_counts().tolist() == [1, 2, 3, 1]
    assert rows.group.tolist() == [0, 0, 0, 0] and rows.ids[0, 0] == tok.bos_token_id


# ----------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def tiny_llama(tiny_dirs):
    import jlang

    path = tiny_dirs["llama2"][0]
    return path, jlang.load_model(path, progress=False)


def _reference_logprob(model, rows, edits):
    """Summed log-probs of the scored tokens from full-vocabulary logits of the right-padded rows (causal: the
    padding after a row's end does not change its logits)."""
    from jax.nn import log_softmax

    logp = np.asarray(log_softmax(model.logits(rows.ids, edits=edits), axis=-1), np.float64)  # [N, T, V]
    nxt = np.take_along_axis(logp[:, :-1], rows.ids[:, 1:, None].astype(np.int64), axis=-1)[..., 0]
    return np.where(rows.score[:, 1:], nxt, 0.0).sum(axis=1)


def test_option_logprobs_on_tiny_model_match_full_logits(tiny_llama):
    from jlang import edits as edit_lib

    _, model = tiny_llama
    rows = [
        {"a": f"w{5 + i} w{60 + i} w{30 + i}", "b": " ".join(f"w{90 + (i * 7 + j) % 40}" for j in range(1 + i % 4))}
        for i in range(8)
    ]
    items = build_items(rows, "a", "b", n=3, seed=1)
    masks = NeuronMasks(
        ["a", "b"],
        np.random.default_rng(0).random((2, model.num_layers, model.num_neurons)) < 0.3,
    )
    res = run_multiple_choice(
        model, masks, items, conditions=["none", "deactivate", "scale=3"], batch_size=4, vocab_chunk=32, progress=False
    )
    token_rows = option_rows(model.tokenizer, items)
    np.testing.assert_allclose(res.logprob[0].ravel(), _reference_logprob(model, token_rows, None), atol=2e-4)
    np.testing.assert_allclose(
        res.logprob[1].ravel(),
        _reference_logprob(model, token_rows, edit_lib.deactivate(masks, "b")),
        atol=2e-4,
    )
    np.testing.assert_allclose(
        res.logprob[2].ravel(),
        _reference_logprob(model, token_rows, edit_lib.amplify(masks, "b", factor=3.0)),
        atol=2e-4,
    )
    assert not np.allclose(res.logprob[0], res.logprob[1])  # the edit matters
    with pytest.raises(Exception, match="unknown language"):
        run_multiple_choice(model, masks.select(["a"]), items, conditions=["deactivate"], progress=False)


def test_cli_mc(tiny_llama, tmp_path, capsys):
    from jlang.cli.studies import COMMANDS

    path, model = tiny_llama
    masks_path = NeuronMasks(
        ["a", "b"], np.random.default_rng(2).random((2, model.num_layers, model.num_neurons)) < 0.2
    ).save(tmp_path / "m.npz")
    parallel = tmp_path / "par.jsonl"
    parallel.write_text(
        "".join(json.dumps({"text": {"a": f"w{5 + i} w{9 + i}", "b": f"w{60 + i} w{80 + i}"}}) + "\n" for i in range(6))
    )
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for register in COMMANDS:
        register(sub)
    args = parser.parse_args(
        [
            "mc",
            "--model",
            str(path),
            "--masks",
            str(masks_path),
            "--parallel",
            str(parallel),
            "--pairs",
            "a:b",
            "b:a",
            "--items",
            "3",
            "--conditions",
            "none",
            "scale=2",
            "--vocab-chunk",
            "64",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    assert "| a→b | 3 |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "o" / "mc.json").read_text())
    assert saved["conditions"] == ["none", "scale=2"] and saved["pairs"] == [
        ["a", "b"],
        ["b", "a"],
    ]
    with pytest.raises(SystemExit):
        parser.parse_args(["mc", "--out", "x", "--pairs", "ab"])


# ----------------------------------------------------------------------------- experiments/arithmetic.py


def _experiment_module():
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("arithmetic", root / "experiments" / "arithmetic.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name], root


def test_arithmetic_config_is_strict():
    from jlang.config import ConfigError, load_config

    mod, root = _experiment_module()
    cfg = load_config(root / "configs" / "arithmetic.yaml", mod.ArithmeticConfig)
    assert cfg.fallback.order == "paper" and cfg.fallback.deactivate_values == (
        -1.5,
        0.0,
    )
    assert cfg.lss.factors == (1.0, 2.0, 5.0, 10.0) and cfg.mc.pairs[0] == ("en", "fr")
    assert load_config(
        root / "configs" / "arithmetic.yaml", mod.ArithmeticConfig, ["fallback.order=[fr, en]"]
    ).fallback.order == ("fr", "en")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(root / "configs" / "arithmetic.yaml", mod.ArithmeticConfig, ["mc.bogus=1"])
    with pytest.raises(ConfigError, match="fits none"):
        load_config(
            root / "configs" / "arithmetic.yaml",
            mod.ArithmeticConfig,
            ["fallback.order=sideways"],
        )


def _tiny_inputs(root, model, source):
    """A corpus directory (heldout + parallel) and LAPE masks/statistics that the experiment reuses (the LAPE
    chain itself is tested with experiments/lape_reproduction.py)."""
    from jlang.stats import ActivationStats

    rng = np.random.default_rng(0)
    sent = lambda: " ".join(f"w{i}" for i in rng.integers(4, 131, size=rng.integers(3, 8)))
    (root / "corpus" / "heldout").mkdir(parents=True)
    for lang in ("en", "fr"):
        (root / "corpus" / "heldout" / f"{lang}.txt").write_text("\n".join(sent() for _ in range(4)) + "\n")
    (root / "corpus" / "parallel").mkdir()
    (root / "corpus" / "parallel" / "heldout.jsonl").write_text(
        "".join(json.dumps({"text": {"en": sent(), "fr": sent()}}) + "\n" for _ in range(8))
    )
    K, L, F = 2, model.num_layers, model.num_neurons
    (root / "lape").mkdir()
    NeuronMasks(
        ["en", "fr"],
        rng.random((K, L, F)) < 0.1,
        {"model": str(source), "method": "lape"},
    ).save(root / "lape" / "masks.npz")
    ActivationStats(
        languages=["en", "fr"],
        tokens=np.full(K, 100),
        over_zero=rng.integers(0, 100, (K, L, F)),
        sum=rng.normal(size=(K, L, F)),
        sum_sq=np.ones((K, L, F)),
        max=np.ones((K, L, F), np.float32),
    ).save(root / "lape" / "stats.npz")


def test_arithmetic_end_to_end_on_tiny_model(tiny_llama, tmp_path):
    mod, _ = _experiment_module()
    path, model = tiny_llama
    _tiny_inputs(tmp_path, model, path)
    out = tmp_path / "out"
    sets = [
        f"out={out}",
        f"lape.out={tmp_path / 'lape'}",
        f"lape.model.source={path}",
        f"lape.corpus.source={tmp_path / 'corpus'}",
        "lape.corpus.languages=[en, fr]",
        "vocab_chunk=64",
        "fallback.prompt_languages=[en]",
        "fallback.prompts_per_language=2",
        "fallback.max_new_tokens=3",
        "lss.items=2",
        "lss.bases=[en]",
        "lss.targets=null",
        "lss.factors=[1.0, 2.0]",
        "lss.alphas=[1.0]",
        "lss.batch_size=4",
        "mc.pairs=[[en, fr]]",
        "mc.items=3",
        "mc.batch_size=4",
    ]
    argv = ["configs/arithmetic.yaml", *[x for s in sets for x in ("--set", s)]]
    assert mod.main(argv) == 0
    text = (out / "report.md").read_text()
    # the hand-made LAPE neurons are reused, not made again
    assert "reused" in text.split("## Headlines")[0]
    for needle in (
        "## Headlines",
        "## Fallback experiment",
        "## Amplification factor sweeps (LSS)",
        "## Multiple choice under edits",
        "| scale | x1 | 0.000 |",
        "![fallback δ=-1.5](fallback_d-1.5.png)",
    ):
        assert needle in text
    assert {p.name for p in out.iterdir()} >= {
        "fallback_d-1.5.json",
        "fallback_d0.png",
        "lss_scale.json",
        "lss_additive.json",
        "lss_sweep.png",
        "mc.json",
        "mc.png",
        "report.md",
        "config.yaml",
    }
    saved = json.loads((out / "fallback_d0.json").read_text())
    assert saved["steps"]["en"] == [[], ["en"], ["en", "fr"]]
    # a second run reuses every result and writes the same numbers
    assert mod.main(argv + ["--set", "reuse_results=true"]) == 0
    section = lambda t: t.split("## Headlines")[1].split("## Wall time")[0]
    assert section((out / "report.md").read_text()) == section(text)
    assert "load model" in text and "load model" not in (out / "report.md").read_text()  # nothing to compute: no model


@pytest.mark.slow
def test_arithmetic_experiment_on_default_model(tmp_path):
    """One command from the repository root on the default model (a reduced run of configs/arithmetic.yaml)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sets = [
        f"out={tmp_path / 'arith'}",
        "fallback.prompt_languages=[fr]",
        "fallback.prompts_per_language=2",
        "fallback.max_steps=2",
        "fallback.max_new_tokens=12",
        "lss.items=1",
        "lss.bases=[en]",
        "lss.targets=[fr, ja]",
        "lss.factors=[1.0, 5.0]",
        "lss.alphas=[1.0]",
        "mc.pairs=[[en, fr]]",
        "mc.items=4",
    ]
    cmd = [
        sys.executable,
        "experiments/arithmetic.py",
        "configs/arithmetic.yaml",
        *[x for s in sets for x in ("--set", s)],
    ]
    subprocess.run(cmd, cwd=root, check=True, timeout=3600)
    text = (tmp_path / "arith" / "report.md").read_text()
    assert "`default`" in text and "| scale | x1 | 0.000 |" in text and "| en→fr | 4 |" in text
    saved = json.loads((tmp_path / "arith" / "fallback_d-1.5.json").read_text())
    assert saved["steps"]["fr"][1] == ["fr"] and len(saved["labels"]["fr"]) == 3
