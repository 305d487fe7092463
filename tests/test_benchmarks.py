"""The benchmark scripts run end to end (on a tiny synthetic model) and their accounting is right.

The speed figures themselves are measured by `benchmarks/run_all.py` on the real
models, never asserted here: these tests check that the machinery produces a
complete, consistent report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import profile_stats as P  # noqa: E402


def test_interval_accounting():
    merged = P.merge([(0, 2), (1, 3), (5, 6)])
    assert merged == [(0, 3), (5, 6)]
    assert P.covered(merged) == 4
    starts = [s for s, _ in merged]
    assert P.overlap(2, 5.5, merged, starts) == 1.5  # [2, 3) and [5, 5.5)
    assert P.overlap(3, 5, merged, starts) == 0


def test_account_splits_matmul_other_idle():
    ops = {
        "dot_fusion": {"opcode": "fusion", "matmul": True, "what": "dot_general"},
        "gelu": {"opcode": "fusion", "matmul": False, "what": "tanh"},
        "while.1": {"opcode": "while", "matmul": False, "what": "while"},
    }
    events = [
        {"name": "dot_fusion", "ts": 0, "dur": 60},
        {"name": "gelu", "ts": 50, "dur": 30},  # 10 of its 30 overlap the matmul
        {"name": "while.1", "ts": 0, "dur": 100},  # a loop spans everything: not an op
        {"name": "ThunkExecutor::Execute", "ts": 0, "dur": 100},  # runtime, not in the HLO
    ]
    r = P.account(events, ops, wall_us=100, steps=1, flops_per_step=6e5)
    assert r["matmul_fraction"] == pytest.approx(0.6)
    assert r["other_only_fraction"] == pytest.approx(0.2)
    assert r["idle_fraction"] == pytest.approx(0.2)
    assert r["matmul_gflops_while_running"] == pytest.approx(6e5 / 60e-6 / 1e9)
    (gelu,) = r["other_ops"]
    assert (gelu["ms_per_step"], gelu["alone_ms_per_step"]) == (pytest.approx(0.03), pytest.approx(0.02))


def test_hlo_ops_finds_matmul_fusions():
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda a, b: jnp.tanh(a @ b) * 2)
    x = jnp.ones((8, 8))
    ops = P.hlo_ops(f.lower(x, x).compile().as_text())
    assert any(o["matmul"] for o in ops.values())
    assert any(not o["matmul"] and o["opcode"] != "parameter" for o in ops.values())


def _run(args, tmp_path):
    pytest.importorskip("torch")  # the transformers side of run_all.py; profile_stats.py's peak
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_run_all_on_a_tiny_model(tmp_path):
    out = tmp_path / "run_all.json"
    stdout = _run(
        [str(BENCH / "run_all.py"), "--models", "synthetic-tiny", "--peak-n", "128", "--out", str(out)], tmp_path
    )
    result = json.loads(out.read_text())
    m = result["models"]["synthetic-tiny"]
    assert m["jlang"]["tokens_sha256"] == m["torch"]["tokens_sha256"]
    rows = {r["row"]: r for r in m["rows"]}
    for label in (
        "plain forward, logits",
        "stats pass vs model(ids)+hooks",
        "intervened forward, logits",
        "generate b=2, total",
    ):
        assert rows[label]["jlang_tokens_per_s"] > 0 and rows[label]["torch_tokens_per_s"] > 0, label
    assert rows["matmuls alone (jlang's floor)"]["jlang_tokens_per_s"] > 0
    assert rows["matmuls alone (jlang's floor)"]["torch_tokens_per_s"] is None
    assert [t["target"] for t in m["targets"]][0] == "stats / torch model(ids)+hooks"
    assert all(t["needs_stats_tokens_per_s"] > 0 for t in m["targets"])
    assert "matmuls alone run at" in stdout and "wrote" in stdout


def test_profile_stats_on_a_tiny_model(tmp_path):
    out = tmp_path / "profile.json"
    _run(
        [
            str(BENCH / "profile_stats.py"),
            "--model",
            "synthetic-tiny",
            "--batch",
            "2",
            "--seq",
            "16",
            "--steps",
            "1",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"stats", "hidden", "matmuls_alone"}
    for r in result["runs"].values():
        parts = r["matmul_fraction"] + r["other_only_fraction"] + r["idle_fraction"]
        assert r["matmul_fraction"] > 0 and parts == pytest.approx(1.0, abs=0.02)
    assert result["runs"]["stats"]["other_ops"], "the statistics pass has non-matmul ops (its reductions)"
