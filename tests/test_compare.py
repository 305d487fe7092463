"""`jlang.analysis.compare` on hand-made statistics whose answers are known, and `jlang compare` end to end on
tiny models."""

import copy
import itertools
import json

import numpy as np
import pytest

from jlang.analysis.compare.core import Comparison, compare
from jlang.analysis.compare.neurons import (
    GENERAL,
    NONE,
    RELATED,
    SPECIFIC,
    CompareError,
    model_neurons,
    neuron_types,
)
from jlang.analysis.compare.profile import divergence_curve, layer_profile, segment
from jlang.analysis.compare.shifts import spontaneous_alignment
from jlang.stats import ActivationStats

TOKENS = 1000


def _stats(p: np.ndarray, languages=("aa", "bb", "cc"), meta=None) -> ActivationStats:
    """Statistics whose activation probabilities are exactly `p` `[K, L, F]` (multiples of 1/1000)."""
    k = p.shape[0]
    over_zero = np.rint(np.asarray(p) * TOKENS).astype(np.int64)
    return ActivationStats(
        list(languages)[:k],
        np.full(k, TOKENS, np.int64),
        over_zero,
        meta=dict(meta or {}),
    )


def _planted() -> tuple[np.ndarray, np.ndarray]:
    """K=3, L=2, F=100; every neuron fires on 10% of every language's tokens except three planted ones.

    base:    (0,5) specific to aa [.9 .01 .01]; (1,7) related aa+bb [.9 .9 .01]; (1,9) general [.95 .95 .95]
    aligned: (0,5) general [.9 .9 .9];          (1,7) unchanged;                 (1,9) specific to cc [.01 .01 .9]
    τ (95th percentile of all 600 p) is 0.1, so only the planted values are above it, and
    top_rate 0.01 selects the 2 lowest-entropy neurons, never the general one.
    """
    base = np.full((3, 2, 100), 0.1)
    base[:, 0, 5] = [0.9, 0.01, 0.01]
    base[:, 1, 7] = [0.9, 0.9, 0.01]
    base[:, 1, 9] = [0.95, 0.95, 0.95]
    aligned = base.copy()
    aligned[:, 0, 5] = [0.9, 0.9, 0.9]
    aligned[:, 1, 9] = [0.01, 0.01, 0.9]
    return base, aligned


# ----------------------------------------------------------------------------- neuron types


def test_neuron_types_codes():
    count = np.array([[0, 1, 2, 3]])
    general = np.array([[True, False, False, False]])
    np.testing.assert_array_equal(neuron_types(count, general, 3), [[GENERAL, SPECIFIC, RELATED, GENERAL]])


def test_planted_type_change_and_jaccard_by_hand():
    base_p, aligned_p = _planted()
    result = compare(_stats(base_p), _stats(aligned_p))
    # types per layer (rows: none, specific, related, general)
    np.testing.assert_array_equal(result.type_counts_base, [[99, 98], [1, 0], [0, 1], [0, 1]])
    np.testing.assert_array_equal(result.type_counts_aligned, [[99, 98], [0, 1], [0, 1], [1, 0]])
    expected = np.zeros((4, 4), np.int64)
    expected[NONE, NONE] = 197
    expected[SPECIFIC, GENERAL] = 1  # (0,5)
    expected[GENERAL, SPECIFIC] = 1  # (1,9)
    expected[RELATED, RELATED] = 1  # (1,7)
    np.testing.assert_array_equal(result.transitions, expected)
    # masks: base aa {(0,5),(1,7)}, bb {(1,7)}, cc {}; aligned aa {(1,7)}, bb {(1,7)}, cc {(1,9)}
    np.testing.assert_array_equal(result.set_sizes_base, [2, 1, 0])
    np.testing.assert_array_equal(result.set_sizes_aligned, [1, 1, 1])
    np.testing.assert_allclose(result.own_jaccard, [1 / 2, 1.0, 0.0])
    np.testing.assert_allclose(result.own_jaccard_layers[0], [0.0, 1.0])  # aa: layer 0 lost (0,5); layer 1 kept (1,7)
    assert np.isnan(result.own_jaccard_layers[2, 0])  # cc has no neuron in layer 0 either time
    assert result.cross_jaccard_base[0, 1] == pytest.approx(1 / 2) and result.cross_jaccard_aligned[0, 1] == 1.0
    # Δp per language and layer = the planted differences / 100 neurons
    np.testing.assert_allclose(
        result.delta["mean"], [[0.0, -0.94 / 100], [0.89 / 100, -0.94 / 100], [0.89 / 100, -0.05 / 100]], atol=1e-12
    )
    np.testing.assert_allclose(result.own_shift[:2], [0.0, 0.0], atol=1e-12)
    assert np.isnan(result.own_shift[2])
    assert result.delta["histogram"].sum() == 3 * 2 * 100
    assert result.tau_base == pytest.approx(0.1) and result.lambda_base == pytest.approx(0.2, abs=1e-3)


def test_identical_checkpoints_change_nothing():
    base_p, _ = _planted()
    result = compare(_stats(base_p), _stats(base_p))
    assert np.all(np.diag(result.transitions) == result.transitions.sum(axis=1))
    assert result.delta["mean_abs"].max() == 0.0
    assert result.profile_base.boundaries == result.profile_aligned.boundaries
    assert np.nanmin(result.own_jaccard) == 1.0


def test_compare_refuses_different_tokens():
    base_p, aligned_p = _planted()
    other = _stats(aligned_p)
    other.tokens[1] += 1
    with pytest.raises(CompareError, match="different tokens"):
        compare(_stats(base_p), other)
    with pytest.raises(CompareError, match="tokens_digest"):
        compare(
            _stats(base_p, meta={"tokens_digest": "a"}),
            _stats(aligned_p, meta={"tokens_digest": "b"}),
        )
    with pytest.raises(CompareError, match="languages"):
        compare(_stats(base_p), _stats(aligned_p, languages=("aa", "cc", "bb")))


# ----------------------------------------------------------------------------- stages


def test_segment_recovers_planted_steps():
    curve = np.array([0.0] * 3 + [5.0] * 4 + [1.0] * 3 + [8.0] * 2)
    bounds, cost = segment(curve, 4)
    assert bounds == [3, 7, 10] and cost == pytest.approx(0.0)
    # two curves segmented jointly: the second alone has its steps at 2 and 9
    joint = np.stack([curve, np.array([0.0] * 2 + [3.0] * 7 + [0.0] * 3)], axis=1)
    assert segment(joint, 6)[0] == [2, 3, 7, 9, 10]
    assert segment(curve, 1) == (
        [],
        pytest.approx(float(((curve - curve.mean()) ** 2).sum())),
    )
    with pytest.raises(CompareError, match="segments"):
        segment(curve, 13)


def test_segment_is_exact_against_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.normal(size=(10, 2))
        best = None
        for cut in itertools.combinations(range(1, 10), 3):
            edges = [0, *cut, 10]
            cost = sum(((x[a:b] - x[a:b].mean(axis=0)) ** 2).sum() for a, b in itertools.pairwise(edges))
            if best is None or cost < best[0] - 1e-12:
                best = (cost, list(cut))
        bounds, cost = segment(x, 4)
        assert bounds == best[1] and cost == pytest.approx(best[0])


def test_layer_profile_finds_planted_shared_middle():
    """Layers 0-1 and 6-7: each language uses its own random neurons; layers 2-5: identical use (shared space)."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, size=(3, 8, 200))
    p[:, 2:6] = rng.uniform(0.05, 0.95, size=(1, 4, 200))
    stats = _stats(p)
    div = divergence_curve(stats.probs)
    assert np.all(div[2:6] < 1e-6) and np.all(div[[0, 1, 6, 7]] > 0.8)
    profile = layer_profile(model_neurons(stats, top_rate=0.02), curve="divergence", num_stages=3)
    assert profile.boundaries == [2, 6]
    assert [s["first_layer"] for s in profile.stages()] == [0, 2, 6]
    few = layer_profile(model_neurons(_stats(p[:, :3])), num_stages=4)  # 3 layers cannot hold 4 stages
    assert few.boundaries == [] and "cannot" in few.note and few.stages() == []


# ----------------------------------------------------------------------------- spontaneous alignment


def test_spontaneous_alignment_by_hand():
    own = np.array([0.5, 0.8, 0.9, np.nan])
    mean_abs = np.array([0.02, 0.01, 0.005, 0.001])
    nll_b = {"aa": 2.0, "bb": 3.0, "cc": 2.5, "dd": 1.0}
    nll_a = {"aa": 1.5, "bb": 2.9, "cc": 2.4, "dd": 1.0}
    sp = spontaneous_alignment(["aa", "bb", "cc", "dd"], ["aa"], own, mean_abs, nll_b, nll_a)
    assert sp["other_languages"] == ["bb", "cc", "dd"]
    assert sp["groups"]["aligned"]["moved"] == pytest.approx(0.5)
    assert sp["groups"]["other"]["moved"] == pytest.approx((0.2 + 0.1) / 2)  # dd's NaN is left out
    assert sp["ratio"]["moved"] == pytest.approx(0.3)
    assert sp["groups"]["other"]["delta_nll"] == pytest.approx((-0.1 - 0.1 + 0.0) / 3)
    assert sp["ratio"]["delta_nll"] == pytest.approx((-0.2 / 3) / -0.5)
    assert sp["ratio"]["mean_abs_dp"] == pytest.approx((0.016 / 3) / 0.02)
    with pytest.raises(CompareError, match="not among"):
        spontaneous_alignment(["aa"], ["zz"], own[:1], mean_abs[:1])


def test_comparison_json_round_trip(tmp_path):
    from jlang.analysis.compare.report import report_markdown, write_outputs

    base_p, aligned_p = _planted()
    result = compare(
        _stats(base_p),
        _stats(aligned_p),
        aligned_languages=["aa"],
        nll_base={"aa": 2.0, "bb": 2.0, "cc": 2.0},
        nll_aligned={"aa": 1.0, "bb": 1.5, "cc": 2.0},
    )
    paths = write_outputs(result, tmp_path)
    back = Comparison.from_dict(json.loads(paths["json"].read_text()))
    np.testing.assert_array_equal(back.transitions, result.transitions)
    assert back.headline() == json.loads(json.dumps(result.headline()))
    text = report_markdown(back)
    assert "Spontaneous alignment" in text and "| specific | 0 | 0 | 0 | 1 |" in text


# ----------------------------------------------------------------------------- end to end on tiny models


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """(base dir, aligned dir, corpus dir): a tiny random Gemma 3 (4 layers) and a copy with perturbed MLP weights."""
    torch = pytest.importorskip("torch")
    from tiny_models import family_configs, save_tiny, tiny_tokenizer

    root = tmp_path_factory.mktemp("compare")
    base_dir = root / "base"
    torch_model = save_tiny(family_configs()["gemma3"], base_dir)
    aligned = copy.deepcopy(torch_model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in aligned.named_parameters():
            if "mlp" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    aligned_dir = root / "aligned"
    aligned.save_pretrained(aligned_dir)
    tiny_tokenizer(torch_model.config.vocab_size).save_pretrained(aligned_dir)
    rng = np.random.default_rng(0)
    corpus = root / "corpus"
    for split in ("train", "heldout"):
        (corpus / split).mkdir(parents=True)
        for lang, lo in (("aa", 4), ("bb", 45), ("cc", 86)):
            lines = [" ".join(f"w{w}" for w in rng.integers(lo, lo + 40, 12)) for _ in range(30)]
            (corpus / split / f"{lang}.txt").write_text("\n".join(lines) + "\n")
    return base_dir, aligned_dir, corpus


def _cli(base, aligned, corpus, out, *extra):
    from jlang.cli import main

    return main(
        [
            "compare",
            "--base",
            str(base),
            "--aligned",
            str(aligned),
            "--corpus",
            str(corpus),
            "--out",
            str(out),
            "--seq-len",
            "16",
            "--batch-size",
            "4",
            "--max-tokens-per-language",
            "192",
            "--top-rate",
            "0.05",
            "--ppl-max-tokens",
            "60",
            "--ppl-seq-len",
            "16",
            "--vocab-chunk",
            "64",
            "--no-progress",
            *extra,
        ]
    )


def test_cli_end_to_end_on_tiny_models(tiny_pair, tmp_path, capsys, monkeypatch):
    """`jlang compare` on a tiny model and its perturbed copy; a rerun reuses everything; base vs itself moves
    nothing."""
    from jlang.analysis.compare.run import CompareConfig, reusable_stats, settings_key

    base, aligned, corpus = tiny_pair
    out = tmp_path / "out"
    assert _cli(base, aligned, corpus, out, "--aligned-languages", "aa") == 0
    printed = capsys.readouterr().out
    assert "stages start at layers" in printed and "moved" in printed and "reusing" not in printed
    names = {p.name for p in out.iterdir()}
    assert names >= {
        "report.md",
        "compare.json",
        "types.png",
        "overlap.png",
        "delta_p.png",
        "stages.png",
        "spontaneous.png",
        "stats_base.npz",
        "stats_aligned.npz",
        "masks_base.npz",
        "masks_aligned.npz",
        "ppl_base.json",
        "ppl_aligned.json",
    }
    sb, sa = (
        ActivationStats.load(out / "stats_base.npz"),
        ActivationStats.load(out / "stats_aligned.npz"),
    )
    np.testing.assert_array_equal(sb.tokens, sa.tokens)
    assert sb.meta["tokens_digest"] == sa.meta["tokens_digest"] and (sb.tokens == 192).all()
    data = json.loads((out / "compare.json").read_text())
    assert data["headline"]["mean_abs_dp"] > 0 and len(data["headline"]["stage_boundaries_base"]) == 3
    assert set(data["spontaneous"]["per_language"]) == {"aa", "bb", "cc"}
    assert data["nll_base"]["aa"] != data["nll_aligned"]["aa"]
    report = (out / "report.md").read_text()
    for needle in (
        "## Neuron types per layer",
        "## Four stages",
        "## Spontaneous alignment",
        "![stages](stages.png)",
    ):
        assert needle in report

    # the same command again: statistics and perplexities of both checkpoints are reused, the result is the same
    assert _cli(base, aligned, corpus, out, "--aligned-languages", "aa") == 0
    assert capsys.readouterr().out.count("reusing") == 4
    assert json.loads((out / "compare.json").read_text())["headline"] == data["headline"]
    # other statistics settings are not reused
    cfg = CompareConfig(
        base=str(base), aligned=str(aligned), corpus=str(corpus), seq_len=16, batch_size=4, max_tokens_per_language=192
    )
    assert reusable_stats(out, "base", settings_key(cfg, "base", ["aa", "bb", "cc"])) is not None
    assert reusable_stats(out, "base", settings_key(cfg, "base", ["aa", "bb"])) is None
    assert reusable_stats(out, "aligned", settings_key(cfg, "base", ["aa", "bb", "cc"])) is None  # another checkpoint

    # the base checkpoint on both sides (its statistics reused from above; the other side loaded by a relative
    # path, which orbax alone would refuse): nothing moves, exactly
    monkeypatch.chdir(base.parent)
    assert _cli(base, base.name, corpus, out, "--no-ppl") == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["headline"]["mean_abs_dp"] == 0.0 and data["headline"]["mean_own_jaccard"] == 1.0
    t = np.array(data["transitions"])
    assert (np.diag(t) == t.sum(axis=1)).all()


def test_runner_errors_before_loading(tmp_path):
    from jlang.analysis.compare.run import CompareConfig, run_compare

    with pytest.raises(CompareError, match="aligned"):
        run_compare(CompareConfig(aligned=""), progress=False)
    (tmp_path / "c" / "train").mkdir(parents=True)
    (tmp_path / "c" / "train" / "aa.txt").write_text("w5 w6\n")
    (tmp_path / "c" / "train" / "bb.txt").write_text("w7 w8\n")
    with pytest.raises(CompareError, match="not among the compared"):
        run_compare(
            CompareConfig(aligned="x", corpus=str(tmp_path / "c"), aligned_languages=("zz",)),
            progress=False,
        )


# ----------------------------------------------------------------------------- experiments


def _experiment(name):
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(name, root / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name], root


def test_experiment_configs_are_strict():
    from jlang.config import ConfigError, load_config

    for name, cls in (
        ("ternary_default", "TernaryDefaultConfig"),
        ("alignment_compare", "AlignmentCompareConfig"),
    ):
        mod, root = _experiment(name)
        cfg = load_config(root / "configs" / f"{name}.yaml", getattr(mod, cls))
        assert cfg.out == f"runs/{name}"
        with pytest.raises(ConfigError, match="unknown key"):
            load_config(root / "configs" / f"{name}.yaml", getattr(mod, cls), ["bogus=1"])


def test_ternary_experiment_on_tiny_model(tiny_dirs, tmp_path):
    mod, _ = _experiment("ternary_default")
    rng = np.random.default_rng(1)
    parallel = tmp_path / "par.jsonl"
    rows = [
        {
            "text": {
                "en": " ".join(f"w{w}" for w in rng.integers(4, 40, 6)),
                "fr": " ".join(f"w{w}" for w in rng.integers(45, 85, 6)),
                "ja": " ".join(f"w{w}" for w in rng.integers(86, 130, 6)),
            }
        }
        for _ in range(40)
    ]
    parallel.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t"
    sets = [
        f"out={out}",
        f"model.source={tiny_dirs['gemma3'][0]}",
        f"parallel={parallel}",
        "languages=[en, fr, ja]",
        "prompt.template='w100 {source} w101'",
        "prompt.source_template='w102 {source} w103'",
        "seq_len=24",
        "max_tokens_per_language=100",
        "identify.top_rate=0.05",
        "lape_masks=null",
    ]
    # the tiny word-level tokenizer knows only w4..w130: the templates are made of such words
    assert (
        mod.main(
            [
                "configs/ternary_default.yaml",
                *[x for s in sets for x in ("--set", s)],
            ]
        )
        == 0
    )
    text = (out / "report.md").read_text()
    assert "## Neuron types per layer" in text and "## Four stages" in text
    stats = ActivationStats.load(out / "stats.npz")
    assert stats.languages == ["en", "fr", "ja"] and (stats.tokens <= 100).all() and (stats.tokens > 50).all()
    assert {"types.png", "stages.png", "masks.png", "masks.npz", "ternary.json"} <= {p.name for p in out.iterdir()}


def _alignment_setup(tiny_pair, tmp_path):
    base, _, corpus = tiny_pair
    rng = np.random.default_rng(2)
    (corpus / "parallel").mkdir(exist_ok=True)
    rows = [
        {
            "text": {
                "aa": " ".join(f"w{w}" for w in rng.integers(4, 40, 5)),
                "bb": " ".join(f"w{w}" for w in rng.integers(45, 85, 5)),
            }
        }
        for _ in range(12)
    ]
    (corpus / "parallel" / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ft_yaml = tmp_path / "ft.yaml"
    ft_yaml.write_text(
        json.dumps(
            {
                "out": str(tmp_path / "ft"),
                "model": {"source": str(base)},
                "data": {
                    "source": str(corpus),
                    "split": "heldout",
                    "languages": ["bb"],
                    "source_language": "aa",
                    "template": "w100 {source} w101",
                    "seq_len": 24,
                    "eval_pairs_per_language": 0,
                },
                "train": {
                    "steps": 2,
                    "batch_size": 2,
                    "learning_rate": 1e-3,
                    "checkpoint_every": 0,
                    "vocab_chunk": None,
                },
            }
        )
    )
    out = tmp_path / "out"
    sets = [
        f"out={out}",
        f"finetune.config={ft_yaml}",
        "finetune.overrides=[]",
        f"compare.corpus={corpus}",
        "compare.seq_len=16",
        "compare.batch_size=4",
        "compare.max_tokens_per_language=96",
        "compare.top_rate=0.05",
        "compare.ppl.enabled=false",
    ]
    return [
        "configs/alignment_compare.yaml",
        "--no-progress",
        *[x for s in sets for x in ("--set", s)],
    ], out


def test_alignment_experiment_reuses_a_finished_finetune(tiny_pair, tmp_path):
    """With `{finetune out}/checkpoint` present, the script skips training and compares base vs that checkpoint."""
    import jlang

    mod, _ = _experiment("alignment_compare")
    argv, out = _alignment_setup(tiny_pair, tmp_path)
    jlang.load_model(tiny_pair[1], progress=False).save(tmp_path / "ft" / "checkpoint")  # the perturbed copy
    assert mod.main(argv) == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["aligned_languages"] == ["bb"] and data["meta"]["aligned"] == str(tmp_path / "ft" / "checkpoint")
    assert data["spontaneous"]["other_languages"] == ["aa", "cc"] and data["headline"]["mean_abs_dp"] > 0
    assert data["meta"]["split"] == "train"  # not the parallel held-out messages the fine-tuning trains on
    assert "## Spontaneous alignment" in (out / "report.md").read_text()


@pytest.mark.slow
def test_alignment_experiment_fine_tunes_through_the_contract(tiny_pair, tmp_path):
    """2 steps of `jlang.train.finetune` on the tiny model, then the comparison; a rerun reuses both."""
    mod, _ = _experiment("alignment_compare")
    argv, out = _alignment_setup(tiny_pair, tmp_path)
    assert mod.main(argv) == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["meta"]["aligned"] == str(tmp_path / "ft" / "checkpoint") and data["headline"]["mean_abs_dp"] > 0
    assert "## Alignment fine-tuning" in (out / "report.md").read_text()
    mtime = (tmp_path / "ft" / "checkpoint").stat().st_mtime_ns
    assert mod.main(argv) == 0  # reuses the checkpoint and both statistics
    assert (tmp_path / "ft" / "checkpoint").stat().st_mtime_ns == mtime
