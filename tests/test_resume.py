"""A statistics run killed part way (a real SIGTERM to a subprocess) resumes to identical counts;
a killed write never leaves an output that loads; counts stay exact past 2^24 and 2^31."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_multihost import LANGS, REPO, write_corpus

import jlang
from jlang import cli
from jlang.io import checkpoint
from jlang.stats import ActivationStats, StatsError
from jlang.stats import checkpoint as stats_checkpoint
from jlang.stats.collect import Accumulator

ARRAYS = ("tokens", "over_zero", "sum", "sum_sq", "max")


def _committed_steps(directory: Path) -> list[int]:
    """Checkpoints orbax has committed (a save in progress has a temporary name)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_sigterm_then_resume_gives_identical_counts(tiny_dirs, tmp_path, capsys):
    from jlang.data.sources import resolve_corpus
    from jlang.stats.collect import collect_stats

    model_dir, _ = tiny_dirs["llama2"]
    corpus_dir = write_corpus(tmp_path / "corpus", lines=24)  # 24 x 31 tokens per language: 46 rows of 16
    out, ckpt = tmp_path / "out", tmp_path / "out" / "stats-checkpoint"
    argv = [
        "stats",
        "--model",
        str(model_dir),
        "--corpus",
        str(corpus_dir),
        "--languages",
        *LANGS,
        "--batch-size",
        "1",
        "--seq-len",
        "16",
        "--out",
        str(out),
        "--checkpoint-every",
        "2",
    ]

    log = tmp_path / "run.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jlang.cli", *argv], cwd=REPO, stdout=f, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while not _committed_steps(ckpt):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text(errors="replace")
    assert code == 128 + signal.SIGTERM, text[-3000:]
    assert "interrupted by SIGTERM after" in text and "--resume" in text
    assert not (out / "stats.npz").exists()  # an interrupted run writes no result
    stopped_at = max(_committed_steps(ckpt))
    total = 3 * 46  # one row per batch
    assert 0 < stopped_at < total, f"the run was not interrupted part way ({stopped_at} of {total})"

    common = [
        "--model",
        str(model_dir),
        "--corpus",
        str(corpus_dir),
        "--languages",
        *LANGS,
        "--seq-len",
        "16",
        "--out",
        str(out),
        "--checkpoint-every",
        "10",
    ]  # how often to checkpoint is not part of the run's identity
    # without --resume, the half-done run is not clobbered
    assert cli.main(["stats", *common, "--batch-size", "1"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    # another run's settings are refused, naming what differs
    assert cli.main(["stats", *common, "--batch-size", "3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "different run" in err and "batch_size: checkpoint 1, this run 3" in err
    assert not (out / "stats.npz").exists()

    assert cli.main(["stats", *common, "--batch-size", "1", "--resume"]) == 0
    assert f"resuming from {ckpt} ({stopped_at} batches done)" in capsys.readouterr().out
    assert not ckpt.exists()  # removed once the result is written
    resumed = ActivationStats.load(out / "stats.npz")

    model = jlang.load_model(model_dir, progress=False)
    whole = collect_stats(model, resolve_corpus(str(corpus_dir), LANGS), batch_size=1, seq_len=16, progress=False)
    assert int(whole.tokens.sum()) == total * 16
    for name in ARRAYS:  # bit for bit: the same batches folded in the same order
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name), err_msg=name)


def test_checkpoint_roundtrip_is_exact_past_2_24_and_2_31(tmp_path):
    """Folding synthetic increments onto totals beyond float32's and int32's exact range, through a checkpoint."""
    acc = Accumulator(2, 1, 3)
    acc.tokens[:] = [2**31 + 5, 2**24 + 1]
    acc.over_zero[:] = np.array([[[2**31 - 1, 2**40 + 7, 2**24 + 1]], [[0, 1, 2**53 - 1]]])
    acc.sum[:] = 2.0**25  # float32 would drop a +1 here
    acc.max[:] = [[[-np.inf, 0.5, 7.25]], [[1.0, 2.0, 3.0]]]
    store = stats_checkpoint.CheckpointStore(tmp_path / "ckpt")
    store.save(7, acc.state(), {"next_index": 7}, {"format": stats_checkpoint.FORMAT})
    assert store.latest_step() == 7 and store.read_record(7)["batches_done"] == 7
    back = Accumulator(2, 1, 3)
    state, iterator_state = store.restore(7, back.state())
    back.load_state(state)
    store.close()
    assert iterator_state == {"next_index": 7}
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(acc, name))
        assert getattr(back, name).dtype == getattr(acc, name).dtype
    one = {  # one batch as the device returns it: int32 counts, float32 sums ([L, K, F], tokens [L, K])
        "tokens": np.array([[1, 1]], np.int32),
        "over_zero": np.ones((1, 2, 3), np.int32),
        "sum": np.ones((1, 2, 3), np.float32),
        "sum_sq": np.zeros((1, 2, 3), np.float32),
        "max": np.zeros((1, 2, 3), np.float32),
    }
    for _ in range(3):
        back.add(one)
    assert back.tokens.tolist() == [2**31 + 8, 2**24 + 4]
    assert back.over_zero[0, 0].tolist() == [2**31 + 2, 2**40 + 10, 2**24 + 4]
    assert back.over_zero[1, 0, 2] == 2**53 + 2 and (back.sum == 2.0**25 + 3).all()
    # and through the statistics file
    stats = ActivationStats(["a", "b"], back.tokens, back.over_zero, back.sum, back.sum_sq, back.max)
    loaded = ActivationStats.load(stats.save(tmp_path / "big.npz"))
    np.testing.assert_array_equal(loaded.over_zero, back.over_zero)
    np.testing.assert_array_equal(loaded.tokens, back.tokens)


def test_stop_flag_is_scoped_to_the_run():
    before = signal.getsignal(signal.SIGTERM)
    with checkpoint.stop_requested() as flag:
        assert not flag.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # delivered at the next bytecode boundary
            if flag.is_set():
                break
            time.sleep(0.001)
        assert flag.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    e = checkpoint.RunInterrupted(signal.SIGINT, 3, 10, "/ckpt")
    assert e.exit_code == 130 and "SIGINT after 3 of 10 batches" in str(e) and "/ckpt" in str(e)


def test_fingerprint_differences_are_named():
    saved = {"model": "a", "batch_size": 4, "corpus": {"en": "x"}, "batches_done": 3}
    stats_checkpoint.check_fingerprint(saved, {"model": "a", "batch_size": 4, "corpus": {"en": "moved"}}, "d")
    with pytest.raises(checkpoint.ResumeError, match=r"model: checkpoint 'a', this run 'b'.*delete d"):
        stats_checkpoint.check_fingerprint(saved, {"model": "b", "batch_size": 4}, "d")


# ----------------------------------------------------------------------------- killed writes

_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np

    def half_then_hang(file, **arrays):  # write part of the archive, then wait to be killed
        file.write(b"PK\\x03\\x04" + b"x" * 5000)
        file.flush()
        print("writing", flush=True)
        time.sleep(600)

    np.savez = np.savez_compressed = half_then_hang
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "stats":
        from jlang.stats import ActivationStats
        ActivationStats(["a"], np.array([5]), np.ones((1, 2, 3), np.int64)).save(path)
    else:
        from jlang.masks import NeuronMasks
        NeuronMasks(["a"], np.ones((1, 2, 3), bool)).save(path)
    """
)


@pytest.mark.parametrize("kind", ["stats", "masks"])
def test_a_killed_write_never_leaves_a_file_that_loads(tmp_path, kind):
    from jlang.masks import MaskError, NeuronMasks

    load, error = (ActivationStats.load, StatsError) if kind == "stats" else (NeuronMasks.load, MaskError)
    target = tmp_path / f"{kind}.npz"
    for previous in (None, "complete"):
        if previous:  # a complete older file must survive the killed overwrite untouched
            if kind == "stats":
                ActivationStats(["a"], np.array([9]), np.zeros((1, 2, 3), np.int64)).save(target)
            else:
                NeuronMasks(["a"], np.zeros((1, 2, 3), bool)).save(target)
        before = target.read_bytes() if previous else None
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WRITER, kind, str(target)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout.readline().strip() == b"writing", proc.stderr.read().decode()[-2000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(f".{target.name}.tmp-")]
        assert partial, "the writer did not write to a temporary file"
        if previous:
            assert target.read_bytes() == before
            load(target)
        else:
            assert not target.exists()
            with pytest.raises((error, FileNotFoundError)):
                load(target)
        for p in partial:  # the stray temporary file does not load either
            with pytest.raises(error, match="not a readable .npz"):
                load(p)
            p.unlink()
