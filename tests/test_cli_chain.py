"""The LAPE chain from the command line on a tiny model and a tiny corpus (the fast variant of
`jlang run configs/lape_default.yaml`)."""

import json

import numpy as np
import pytest
import yaml

from jlang.cli import main
from jlang.masks import NeuronMasks
from jlang.stats import ActivationStats


@pytest.fixture()
def tiny_corpus(tmp_path):
    """Three made-up 'languages' over disjoint word ranges of the tiny tokenizer's vocabulary."""
    rng = np.random.default_rng(0)
    root = tmp_path / "corpus"
    root.mkdir()
    for lang, lo in [("aa", 4), ("bb", 40), ("cc", 80)]:
        lines = [" ".join(f"w{w}" for w in rng.integers(lo, lo + 40, 30)) for _ in range(40)]
        (root / f"{lang}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_stats_identify_export_show(tiny_dirs, tiny_corpus, tmp_path, capsys):
    model_dir, _ = tiny_dirs["llama2"]
    out = tmp_path / "stats"
    assert (
        main(
            [
                "stats",
                "--model",
                str(model_dir),
                "--corpus",
                str(tiny_corpus),
                "--languages",
                "aa",
                "bb",
                "cc",
                "--batch-size",
                "4",
                "--seq-len",
                "32",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    stats = ActivationStats.load(out / "stats.npz")
    assert stats.languages == ["aa", "bb", "cc"] and stats.over_zero.shape == (3, 3, 83)
    assert (stats.tokens > 1000).all() and stats.meta["hook_point"] == "mlp.act"

    masks_path = tmp_path / "masks.npz"
    assert (
        main(["identify", "--stats", str(out), "--method", "lape", "--top-rate", "0.05", "--out", str(masks_path)]) == 0
    )
    masks = NeuronMasks.load(masks_path)
    assert masks.masks.shape == (3, 3, 83) and masks.unique_count() == round(0.05 * 3 * 83)
    # NumPy alone opens it
    raw = np.load(masks_path)
    assert raw["masks"].dtype == bool and json.loads(str(raw["meta"]))["method"] == "lape"

    pt = tmp_path / "masks.pt"
    assert main(["export", str(masks_path), "--format", "lape-pt", "--out", str(pt)]) == 0
    back = NeuronMasks.from_lape_pt(pt, ["aa", "bb", "cc"], num_neurons=83)
    np.testing.assert_array_equal(back.masks, masks.masks)

    assert main(["show", str(masks_path), "--png", str(tmp_path / "h.png")]) == 0
    assert (tmp_path / "h.png").stat().st_size > 1000

    # statistics from another model are refused before identification
    other, _ = tiny_dirs["gemma2"]
    assert main(["identify", "--stats", str(out), "--model", str(other), "--out", str(tmp_path / "x.npz")]) == 2
    assert "another model" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_run_config_chain(tiny_dirs, tiny_corpus, tmp_path):
    model_dir, _ = tiny_dirs["gemma3"]
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "configs/lape_default.yaml",
                "--set",
                f"model.source={model_dir}",
                "--set",
                f"corpus.source={tiny_corpus}",
                "--set",
                "corpus.languages=[aa, bb, cc]",
                "--set",
                "stats.batch_size=4",
                "--set",
                "stats.seq_len=32",
                "--set",
                f"out={out}",
                "--set",
                "identify.top_rate=0.05",
            ]
        )
        == 0
    )
    for name in ("config.yaml", "stats.npz", "masks.npz", "masks.png", "summary.md"):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "config.yaml").read_text())["corpus"]["languages"] == ["aa", "bb", "cc"]
    summary = (out / "summary.md").read_text()
    assert "| aa |" in summary and "unique neurons selected" in summary


def test_bad_inputs_fail_before_work(tiny_dirs, tiny_corpus, tmp_path, capsys):
    model_dir, _ = tiny_dirs["llama2"]
    # an unknown language code
    rc = main(
        [
            "stats",
            "--model",
            str(model_dir),
            "--corpus",
            str(tiny_corpus),
            "--languages",
            "aa",
            "xx",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert rc == 2 and "xx" in capsys.readouterr().err and not (tmp_path / "s").exists()
    # a language whose corpus is too small for one window
    (tiny_corpus / "dd.txt").write_text("w5 w6\n")
    rc = main(
        [
            "stats",
            "--model",
            str(model_dir),
            "--corpus",
            str(tiny_corpus),
            "--languages",
            "aa",
            "dd",
            "--seq-len",
            "64",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "dd" in err and not (tmp_path / "s" / "stats.npz").exists()
    # an empty corpus file
    (tiny_corpus / "ee.txt").write_text("")
    rc = main(
        [
            "stats",
            "--model",
            str(model_dir),
            "--corpus",
            str(tiny_corpus),
            "--languages",
            "ee",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert rc == 2 and "ee" in capsys.readouterr().err
    # a .pt holding something else than tensors and lists
    import pickle

    bad = tmp_path / "bad.pt"
    bad.write_bytes(pickle.dumps({"a": 1}))
    assert main(["show", str(bad)]) == 2
    assert "bad.pt" in capsys.readouterr().err
