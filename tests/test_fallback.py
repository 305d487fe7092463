"""The fallback experiment (jlang.evals.fallback): deactivation order, most-common rule, bookkeeping with a fake
model and identifier whose fallback chain is known, and `jlang fallback` on a tiny model."""

import argparse
import json

import numpy as np
import pytest

from jlang.evals.fallback import (
    FallbackResult,
    distinct_ratio,
    fallback_order,
    most_common,
    run_fallback,
)
from jlang.masks import NeuronMasks


def _masks(counts: dict[str, int], L=2, F=12, shared=()):
    """Masks with disjoint neurons per language (`counts[l]` of them), plus neurons `shared` by pairs of languages."""
    langs = list(counts)
    m = np.zeros((len(langs), L, F), bool)
    flat = m.reshape(len(langs), -1)
    start = 0
    for k, lang in enumerate(langs):
        flat[k, start : start + counts[lang]] = True
        start += counts[lang]
    for a, b in shared:
        flat[langs.index(a), start] = flat[langs.index(b), start] = True
        start += 1
    return NeuronMasks(langs, m, {"method": "hand"})


# ----------------------------------------------------------------------------- order and most common


def test_fallback_order_modes():
    masks = _masks({"ja": 3, "en": 1, "id": 5, "fr": 2, "de": 2})
    # PAPER_ORDER (en fr es it pt ru de ar zh ko ja) restricted to the masks, then the others in mask order
    assert fallback_order(masks, "paper", prompt_first=False) == [
        "en",
        "fr",
        "de",
        "ja",
        "id",
    ]
    assert fallback_order(masks, "paper", prompt="ja") == ["ja", "en", "fr", "de", "id"]
    assert fallback_order(masks, "paper", prompt="ja", prompt_first=False) == [
        "en",
        "fr",
        "de",
        "ja",
        "id",
    ]
    assert fallback_order(masks, "count", prompt_first=False) == [
        "id",
        "ja",
        "fr",
        "de",
        "en",
    ]  # ties: mask order
    assert fallback_order(masks, "mask", prompt="de") == ["de", "ja", "en", "id", "fr"]
    assert fallback_order(masks, ["de", "en"], prompt="fr") == ["fr", "de", "en"]
    assert fallback_order(masks, "paper", prompt="ja", max_steps=2) == ["ja", "en"]
    with pytest.raises(ValueError, match="do not hold"):
        fallback_order(masks, ["en", "xx"])
    with pytest.raises(ValueError, match="twice"):
        fallback_order(masks, ["en", "en"])
    with pytest.raises(ValueError, match="order must be one of"):
        fallback_order(masks, "alphabetical")
    with pytest.raises(ValueError, match="prompt_first=False"):
        fallback_order(masks, "paper", prompt="ko")
    with pytest.raises(ValueError, match="max_steps"):
        fallback_order(masks, "paper", max_steps=0)


def test_most_common_breaks_ties_by_first_appearance():
    assert most_common(["fr", "en", "en", "fr"]) == "fr"
    assert most_common(["en", "fr", "fr"]) == "fr"
    assert most_common(["none", "de"]) == "none"
    assert most_common([]) == "none"


def test_distinct_ratio_flags_loops():
    assert distinct_ratio("si si si si si") == pytest.approx(3 / 12)  # "si ", "i s", " si" over 12 trigrams
    assert distinct_ratio("abcdef") == 1.0
    assert distinct_ratio("ab\n  cd") == pytest.approx(1.0)  # whitespace runs collapse to one space
    assert np.isnan(distinct_ratio(" a "))


# ----------------------------------------------------------------------------- a fake model with a known fallback chain


PREFERENCE = {"ja": ["ja", "en", "de", "fr"], "fr": ["fr", "de", "en", "ja"]}


def _fake_generator(masks, value, calls):
    """Answers in the first language of the prompt language's preference list whose neurons are not all set to
    `value`; prompt 0 of every language answers with nothing (label "none"); nothing left: empty output."""

    def generate(prompts, edits):
        src = prompts[0].split(":")[0]
        off = set()
        mask = np.asarray(edits.mask)
        if mask.any():  # step 0 passes the identity edit
            scale, shift = np.asarray(edits.scale), np.asarray(edits.shift)
            assert (scale[mask] == 0).all() and np.allclose(shift[mask], value)  # a = value on the union
            assert (scale[~mask] == 1).all() and (shift[~mask] == 0).all()
            off = {l for l in masks.languages if (mask | ~masks[l]).all()}
            calls.append((src, sorted(off), int(mask.sum())))
        lang = next((l for l in PREFERENCE[src] if l not in off), None)
        return [""] + [f"{lang} text" if lang else "" for _ in prompts[1:]]

    return generate


def _identify(texts):
    return [t.split(" ")[0] if t.strip() else "none" for t in texts]


def test_fallback_chain_with_fake_model_and_identifier(tmp_path):
    masks = _masks({"en": 2, "fr": 3, "de": 1, "ja": 4}, shared=[("en", "fr")])  # en and fr share one neuron
    calls = []
    prompts = {l: [f"{l}:{i}" for i in range(3)] for l in ("ja", "fr")}
    res = run_fallback(
        masks,
        prompts,
        generate=_fake_generator(masks, -1.5, calls),
        identify=_identify,
        order="paper",
        value=-1.5,
        progress=False,
    )
    # paper order restricted to the masks: en fr de ja; the prompt's language first
    assert res.steps["ja"] == [
        [],
        ["ja"],
        ["ja", "en"],
        ["ja", "en", "fr"],
        ["ja", "en", "fr", "de"],
    ]
    assert res.steps["fr"] == [
        [],
        ["fr"],
        ["fr", "en"],
        ["fr", "en", "de"],
        ["fr", "en", "de", "ja"],
    ]
    assert res.fallback("ja") == ["ja", "en", "de", "de", "none"]
    assert res.fallback("fr") == ["fr", "de", "de", "ja", "none"]
    # the union's size: en 2 + 1 shared, fr 3 + 1 shared, de 1, ja 4 -> the shared neuron counts once
    assert res.neurons["ja"] == [0, 4, 4 + 3, 4 + 3 + 3, 4 + 3 + 3 + 1]
    assert res.neurons["fr"] == [0, 4, 4 + 2, 4 + 2 + 1, 11]
    assert calls[:2] == [("ja", ["ja"], 4), ("ja", ["en", "ja"], 7)]
    # prompt 0 answers nothing: 1/3 "none" until every language is off
    assert res.shares("ja")[1] == pytest.approx({"en": 2 / 3, "none": 1 / 3})
    np.testing.assert_allclose(res.share_of("ja", "ja"), [2 / 3, 0, 0, 0, 0])
    assert res.first_departure("ja") == 1 and res.first_departure("fr") == 1
    assert res.generations["fr"][3][1] == {
        "prompt": "fr:1",
        "output": "ja text",
        "language": "ja",
    }
    # outputs "ja text" (5 distinct trigrams of 5 -> 1.0) and "" (no trigram, ignored); nothing at the last step
    np.testing.assert_array_equal(res.distinctness("ja"), [1.0, 1.0, 1.0, 1.0, np.nan])
    assert res.meta["order"] == "paper" and res.value == -1.5
    assert "| ja | none: **ja** 0.67 | +ja: **en** 0.67 |" in res.table()

    # without prompt_first the explicit order is followed as given, for every prompt language
    res2 = run_fallback(
        masks,
        {"fr": prompts["fr"]},
        generate=_fake_generator(masks, 0.0, []),
        identify=_identify,
        order=["de", "fr"],
        prompt_first=False,
        value=0.0,
        progress=False,
    )
    assert res2.steps["fr"] == [[], ["de"], ["de", "fr"]] and res2.fallback("fr") == [
        "fr",
        "fr",
        "en",
    ]

    paths = res.save(tmp_path / "fallback")
    assert paths["png"].stat().st_size > 0
    back = FallbackResult.from_dict(json.loads(paths["json"].read_text()))
    assert back.fallback("fr") == res.fallback("fr") and back.steps == res.steps and back.neurons == res.neurons
    assert json.loads(paths["json"].read_text())["summary"]["ja"][1]["most_common"] == "en"


def test_run_fallback_rejects_empty_prompts():
    masks = _masks({"en": 1, "fr": 1})
    with pytest.raises(ValueError, match="no prompts"):
        run_fallback(masks, {"en": []}, generate=None, identify=_identify, progress=False)
    with pytest.raises(ValueError, match="no prompt language"):
        run_fallback(masks, {}, generate=None, identify=_identify, progress=False)


# ----------------------------------------------------------------------------- tiny model and CLI


@pytest.fixture(scope="module")
def tiny_llama(tiny_dirs):
    import jlang

    path = tiny_dirs["llama2"][0]
    return path, jlang.load_model(path, progress=False)


def test_cli_fallback(tiny_llama, tmp_path, capsys):
    from jlang.cli.studies import COMMANDS

    path, model = tiny_llama
    rng = np.random.default_rng(1)
    masks = NeuronMasks(["en", "fr"], rng.random((2, model.num_layers, model.num_neurons)) < 0.4)
    masks_path = masks.save(tmp_path / "m.npz")
    corpus = tmp_path / "corpus"
    (corpus / "heldout").mkdir(parents=True)
    (corpus / "heldout" / "en.txt").write_text("w5 w6 w7\nw8 w9\n")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for register in COMMANDS:
        register(sub)
    args = parser.parse_args(
        [
            "fallback",
            "--model",
            str(path),
            "--masks",
            str(masks_path),
            "--corpus",
            str(corpus),
            "--prompt-languages",
            "en",
            "--prompts-per-language",
            "2",
            "--max-new-tokens",
            "4",
            "--order",
            "fr,en",
            "--identify-languages",
            "en",
            "fr",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    assert "| en |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "o" / "fallback.json").read_text())
    assert saved["steps"]["en"] == [[], ["en"], ["en", "fr"]] and saved["value"] == -1.5
    assert saved["neurons"]["en"] == [
        0,
        int(masks["en"].sum()),
        int((masks["en"] | masks["fr"]).sum()),
    ]
    outs = [[g["output"] for g in step] for step in saved["generations"]["en"]]
    assert len(outs) == 3 and all(len(o) == 2 for o in outs)
    assert outs[2] != outs[0]  # 40 % of the neurons at -1.5 change the greedy continuations
    assert (tmp_path / "o" / "fallback.png").is_file()
