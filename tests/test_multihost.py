"""Two `jax.distributed` processes on 127.0.0.1 (CPU) give the statistics and masks of one process.

Each process runs `jlang stats` (`jlang.cli.main`) on its grain shard of a tiny
corpus; the mesh spans both processes' devices, so every batch is one global batch.
Process 0 alone writes `stats.npz`.

What "equal" means, measured on this tiny Llama (float32, XLA CPU):

* against one process running the same global batches on a mesh of the same shape
  (the same rows on each device as in the 2-process run): every array is bit-for-bit equal;
* against one process on one device with the same global batch size: token and
  activation counts, hence LAPE masks, are exactly equal; float sums and maxima
  differ in the last bits, because XLA's CPU matmuls round differently when a device
  holds 4 rows instead of 2, or when the model axis is split (measured on this corpus,
  both layouts and also with 2 devices per process: max |diff| 2.4e-6 on maxima up
  to 5.4, 4.6e-5 on sums up to 493, 8.8e-5 on sums of squares up to 902; relative
  <= 2.1e-5, the largest where a sum nearly cancels). Counts are compared exactly,
  floats within that rounding. (With 2 devices per process even the same mesh shape
  in one process differs by ~1e-6 relative in the sums: the cross-process all-reduce
  adds the four partial sums in another order.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jlang
from jlang.parallel import distributed

REPO = Path(__file__).resolve().parents[1]
LANGS = ("aa", "bb", "cc")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_corpus(root: Path, lines: int = 40, words: int = 30) -> Path:
    """Three made-up languages over disjoint word ranges of the tiny tokenizer."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for lang, lo in zip(LANGS, (4, 40, 80)):
        text = [" ".join(f"w{w}" for w in rng.integers(lo, lo + 40, words)) for _ in range(lines)]
        (root / f"{lang}.txt").write_text("\n".join(text) + "\n")
    return root


# Each process runs `jlang stats` once per argument list, in one interpreter (imports and the
# jax.distributed set-up are paid once; the second command's initialisation is a no-op).
_WORKER = """
import sys
from jlang.cli import main

commands, current = [], []
for arg in sys.argv[1:]:
    if arg == "--then":
        commands.append(current)
        current = []
    else:
        current.append(arg)
sys.exit(max(main(c) for c in commands + [current]))
"""


def run_two_processes(
    tmp_path: Path, commands: list[list[str]], devices: int, timeout: float = 200, *, layout_first: bool = False
) -> list[str]:
    """Run the `jlang` COMMANDS in turn on 2 processes with `devices` CPU devices each; return their logs.

    The process layout goes after each sub-command's name, or with `layout_first` before it
    (as `jlang`'s global flags, which every sub-command accepts).
    """
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
        layout = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
        split = 0 if layout_first else 1
        argv = [a for c in commands for a in (*c[:split], *layout, *c[split:], "--then")][:-1]
        with open(log, "wb") as f:  # files, not pipes: a full pipe would stall one process, and both with it
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WORKER, *argv], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT
                )
            )
    deadline = time.monotonic() + timeout
    try:
        codes = [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = [log.read_text(errors="replace") for log in logs]
    assert codes == [0, 0], "\n\n".join(t[-4000:] for t in text)
    return text


def _stats_argv(model_dir, corpus_dir, out, batch_size, *extra) -> list[str]:
    return [
        "stats",
        "--model",
        str(model_dir),
        "--corpus",
        str(corpus_dir),
        "--languages",
        *LANGS,
        "--batch-size",
        str(batch_size),
        "--seq-len",
        "16",
        "--out",
        str(out),
        *extra,
    ]


def test_two_processes_equal_one_process(tiny_dirs, tmp_path):
    """2 processes x 1 CPU device, two layouts:

    A. data parallel across processes (mesh data=2): each process feeds its own rows;
    B. the model axis across processes (mesh 1 x 2): both processes feed the same rows.
    """
    if len(jax.devices()) < 2:
        pytest.skip("needs 2 fake devices for the same-layout reference")
    from jlang.data.pipeline import make_batches
    from jlang.data.sources import resolve_corpus
    from jlang.methods import lape
    from jlang.stats import ActivationStats
    from jlang.stats.collect import collect_stats, run_stats

    model_dir, _ = tiny_dirs["llama2"]  # heads shard over model (48 / 2); 83 neurons do not, and stay replicated
    corpus_dir = write_corpus(tmp_path / "corpus", lines=16)  # 496 tokens per language: 31 rows of 16
    per_process = 2
    out_a, out_b = tmp_path / "data-parallel", tmp_path / "model-parallel"
    logs = run_two_processes(
        tmp_path,
        [
            # checkpoints every 8 batches exercise orbax's collective save on 2 processes
            _stats_argv(model_dir, corpus_dir, out_a, per_process, "--checkpoint-every", "8"),
            _stats_argv(model_dir, corpus_dir, out_b, 2 * per_process, "--mesh", "1,2", "--checkpoint-every", "0"),
        ],
        devices=1,
    )
    assert logs[0].count("wrote") == 2 and "wrote" not in logs[1]  # results written once, by process 0
    for out in (out_a, out_b):
        assert not (out / "stats-checkpoint").exists()  # checkpoints are removed once the result is written
    multi, tensor_parallel = ActivationStats.load(out_a / "stats.npz"), ActivationStats.load(out_b / "stats.npz")
    assert multi.meta["processes"] == 2 and multi.meta["batch_shards"] == 2
    assert tensor_parallel.meta["batch_shards"] == 1
    assert multi.tokens.tolist() == [496, 496, 496]

    corpus = resolve_corpus(str(corpus_dir), LANGS)
    model = jlang.load_model(model_dir, progress=False)

    # A1. the same global batches on a 2-device mesh in one process: bit-for-bit equal
    shards = [
        make_batches(
            corpus,
            model.tokenizer,
            batch_size=per_process,
            seq_len=16,
            process_index=p,
            process_count=2,
            progress=False,
        )
        for p in range(2)
    ]
    global_batches = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*shards)]
    mesh = jlang.parallel.make_mesh(data=2, model=1, devices=jax.devices()[:2])
    acc = run_stats(model.with_mesh(mesh), global_batches, len(LANGS), progress=False)
    for name in ("tokens", "over_zero", "sum", "sum_sq", "max"):
        np.testing.assert_array_equal(getattr(multi, name), getattr(acc, name), err_msg=name)

    # A2, B. one device, the same global batch size: counts exact, floats within XLA CPU rounding
    one = collect_stats(model, corpus, batch_size=2 * per_process, seq_len=16, progress=False)
    for got in (multi, tensor_parallel):
        np.testing.assert_array_equal(got.tokens, one.tokens)
        np.testing.assert_array_equal(got.over_zero, one.over_zero)
        np.testing.assert_allclose(got.max, one.max, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.sum, one.sum, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(got.sum_sq, one.sum_sq, rtol=1e-5, atol=1e-3)
        # masks follow from counts: identical
        np.testing.assert_array_equal(lape(got, top_rate=0.05).masks, lape(one, top_rate=0.05).masks)


# ----------------------------------------------------------------------------- the process layout


def test_spec_from_flags_and_environment():
    class Args:
        coordinator, num_processes, process_id, distributed = None, None, None, False

    assert distributed.spec_from(Args(), environ={}) is None  # single process: nothing to initialise
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed.spec_from(Args(), environ=env) == distributed.DistributedSpec("10.0.0.2:1234", 4, 3)
    args = Args()
    args.process_id = 1  # a flag overrides its variable
    assert distributed.spec_from(args, environ=env).process_id == 1
    args = Args()
    args.distributed = True
    assert distributed.spec_from(args, environ={}) == distributed.DistributedSpec(auto=True)
    assert distributed.spec_from(Args(), environ={"JLANG_DISTRIBUTED": "1"}).auto


@pytest.mark.parametrize(
    "env, message",
    [
        ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "missing --coordinator"),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "2"}, "missing --process-id"),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "HOST:PORT"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, r"in \[0, 2\)"),
        ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES must be an integer"),
    ],
)
def test_incomplete_layouts_name_the_missing_flag(env, message):
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.spec_from(None, environ=env)


def test_single_process_helpers_are_no_ops(tiny_dirs):
    assert distributed.initialize(None) is False
    assert distributed.is_primary() and distributed.any_process(True) and not distributed.any_process(False)
    distributed.barrier("nothing to wait for")
    assert distributed.default_mesh() is None
    assert dict(distributed.default_mesh(data=2, model=4).shape) == {"data": 2, "model": 4}
    model = jlang.load_model(tiny_dirs["llama2"][0], progress=False)
    assert distributed.for_processes(model) is model
