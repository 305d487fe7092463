"""`jlang run configs/lape_default.yaml`, the README's main job, on the default model and corpus (slow)."""

import subprocess
import sys

import pytest

from jlang.masks import NeuronMasks
from jlang.stats import ActivationStats

pytestmark = pytest.mark.slow


def test_main_job_end_to_end(tmp_path):
    out = tmp_path / "lape_default"
    proc = subprocess.run(
        [sys.executable, "-m", "jlang.cli", "run", "configs/lape_default.yaml", "--set", f"out={out}"],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = ActivationStats.load(out / "stats.npz")
    masks = NeuronMasks.load(out / "masks.npz")
    assert stats.languages == ["en", "zh", "fr", "es", "ru", "ja", "de", "ar", "ko", "id", "vi", "hi"]
    assert (stats.tokens > 5000).all() and stats.meta["model"] == "default"
    assert masks.masks.shape == (12, 18, 2048)
    assert masks.unique_count() == round(0.01 * 18 * 2048)
    assert (masks.masks.sum(axis=(1, 2)) > 0).all()
    assert (out / "masks.png").stat().st_size > 10_000
    assert "| hi |" in (out / "summary.md").read_text()
