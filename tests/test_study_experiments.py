"""The culture and overlap experiments' one command on the packaged default model (slow, small budgets).

A fresh clone has no `runs/lape_default`, so these point `reuse` at a missing path and collect
small statistics themselves, as a fresh clone's first run does.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _experiment(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_experiment", ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def _run(name: str, config: str, sets: list[str]) -> int:
    return _experiment(name).main([str(ROOT / "configs" / config), *(a for s in sets for a in ("--set", s))])


@pytest.mark.slow
def test_overlap_experiment_on_default_model(tmp_path):
    out = tmp_path / "overlap"
    sets = [
        f"out={out}",
        f"reuse={tmp_path / 'missing'}",
        f"lape.out={out / 'lape'}",
        "lape.corpus.languages=[en, fr, zh, ja]",
        "lape.corpus.max_tokens_per_language=2048",
        "overlap.permutations=99",
        "codemix.bases=[fr]",
        "codemix.partners=[en]",
        "codemix.ratios=[0.5]",
        "codemix.max_rows=16",
    ]
    assert _run("overlap", "overlap_default.yaml", sets) == 0
    report = (out / "report.md").read_text()
    assert "IoU" in report and "Neuron specialisation" in report


@pytest.mark.slow
def test_culture_experiment_on_default_model(tmp_path):
    out = tmp_path / "culture"
    sets = [
        f"out={out}",
        "cultures=[en_US=en, de_DE=de, ja_JP=ja]",
        "culture_corpus.train_lines=60",
        "culture_corpus.heldout_lines=10",
        f"language.reuse_stats={tmp_path / 'missing.npz'}",
        "language.max_tokens_per_language=2048",
        "ppl.max_tokens=128",
    ]
    assert _run("culture", "culture_default.yaml", sets) == 0
    report = (out / "report.md").read_text()
    assert "pure" in report and "compound" in report
