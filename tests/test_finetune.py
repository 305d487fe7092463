"""Alignment fine-tuning (`jlang.train`): the loss falls, neuron mode touches only its neurons, a killed run
resumes to the same parameters bit for bit, and the Hugging Face export loads in `transformers` with jlang's logits.

Tiny models (tests/tiny_models.py) train on a made-up parallel corpus whose "translation" is learnable:
language bb writes word w(i + 40) for aa's w(i), cc writes w(i + 80) in reverse order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import jlang
from jlang.config import ConfigError, ModelSection
from jlang.io.checkpoint import ResumeError
from jlang.masks import MaskShapeError, NeuronMasks, UnknownLanguageError
from jlang.train.config import DataSection, FinetuneConfig, TrainSection, load_finetune_config
from jlang.train.data import (
    batch_dataset,
    eval_batches,
    iterator,
    pair_rows,
    translation_pairs,
)
from jlang.train.sft import finetune

REPO = Path(__file__).resolve().parents[1]
SLOW_DEFAULT_STEPS = 8


@pytest.fixture(scope="module")
def parallel_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(48):
        words = rng.integers(4, 40, int(rng.integers(3, 7)))
        text = {
            "aa": " ".join(f"w{w}" for w in words),
            "bb": " ".join(f"w{w + 40}" for w in words),
            "cc": " ".join(f"w{w + 80}" for w in words[::-1]),
        }
        rows.append({"id": str(len(rows)), "text": text})
    path = tmp_path_factory.mktemp("pairs") / "parallel.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_config(model_dir, parallel_file, out, **overrides) -> FinetuneConfig:
    """A short run on a tiny model; `overrides` replace top-level fields, `train`/`data` dicts merge."""
    data = {
        "source": str(parallel_file),
        "languages": ("bb", "cc"),
        "source_language": "aa",
        "template": "{source} w3\n",
        "seq_len": 20,
    }
    train = {
        "steps": 8,
        "batch_size": 4,
        "learning_rate": 3e-3,
        "checkpoint_every": 0,
        "vocab_chunk": 48,
    }
    data.update(overrides.pop("data", {}))
    train.update(overrides.pop("train", {}))
    return FinetuneConfig(
        out=str(out),
        model=ModelSection(source=str(model_dir)),
        data=DataSection(**data),
        train=TrainSection(**train),
        **overrides,
    )


def params_of(path) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in jlang.load_model(path, progress=False).params.items()}


def assert_bitwise_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k, x in a.items():
        assert x.dtype == b[k].dtype and x.shape == b[k].shape, k
        assert np.array_equal(x.view(np.uint32), b[k].view(np.uint32)), f"{k} differs"  # -0.0 != 0.0, NaN == NaN


# ----------------------------------------------------------------------------- data


def test_pairs_rows_and_order(tiny_dirs, parallel_file):
    from jlang.train.data import read_jsonl

    rows = [r["text"] for r in read_jsonl(parallel_file)]
    train, ev = translation_pairs(
        rows,
        ["bb", "cc"],
        source_language="aa",
        template="{source} w3\n",
        pairs_per_language=20,
        eval_pairs_per_language=5,
        seed=1,
    )
    assert [len(train[k]) for k in ("bb", "cc")] == [20, 20] and [len(ev[k]) for k in ("bb", "cc")] == [5, 5]
    assert not set(train["bb"]) & set(ev["bb"])  # held-out pairs never train
    prompt, response = train["bb"][0]
    assert prompt.endswith(" w3\n") and [int(w[1:]) + 40 for w in prompt.split()[:-1]] == [
        int(w[1:]) for w in response.split()
    ]

    tok = jlang.load_model(tiny_dirs["llama2"][0], progress=False).tokenizer
    pr = pair_rows(train, tok, seq_len=16)
    i = 0
    p_ids = tok(train["bb"][0][0], add_special_tokens=False)["input_ids"]
    r_ids = tok(train["bb"][0][1], add_special_tokens=False)["input_ids"]
    n = 1 + len(p_ids) + len(r_ids) + 1
    assert pr.ids[i, :n].tolist() == [
        tok.bos_token_id,
        *p_ids,
        *r_ids,
        tok.eos_token_id,
    ]
    assert pr.attend[i].tolist() == [True] * n + [False] * (16 - n)
    # the loss counts the response and the EOS, never the prompt or padding
    assert pr.loss[i].tolist() == [False] * (1 + len(p_ids)) + [True] * (len(r_ids) + 1) + [False] * (16 - n)

    # the union over 2 shards of batch i is the single-process batch i, in every epoch
    one = iterator(batch_dataset(pr, batch_size=4, seed=3))
    two = [iterator(batch_dataset(pr, batch_size=4, seed=3, shard=s, shards=2)) for s in range(2)]
    for _ in range(3 * len(pr) // 4):
        a = next(one)["ids"]
        b = np.concatenate([next(two[0])["ids"], next(two[1])["ids"]])
        assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))
    # the iterator resumes from its state
    it = iterator(batch_dataset(pr, batch_size=4, seed=3))
    next(it), next(it)
    state = it.get_state()
    expected = next(it)["ids"]
    np.testing.assert_array_equal(next(iterator(batch_dataset(pr, batch_size=4, seed=3), state))["ids"], expected)
    # evaluation batches cover every row once; padding rows carry no loss
    ev_rows = pair_rows(ev, tok, seq_len=12)
    batches = eval_batches(ev_rows, batch_size=4)
    assert sum(int(b["loss"].sum()) for b in batches) == int(ev_rows.loss.sum())


def test_chunked_loss_equals_full_logits(tiny_dirs):
    """The vocabulary-chunked response NLL (131 ids in chunks of 48: the last chunk overlaps) and its gradient
    equal the plain log-softmax of the full logits (gemma2: tied embedding and final soft-cap)."""
    import jax

    from jlang.train.step import response_nll

    model = jlang.load_model(tiny_dirs["gemma2"][0], progress=False)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config.vocab_size, (2, 9)).astype(np.int32)
    attend = np.ones((2, 9), bool)
    attend[1, 7:] = False
    loss = np.zeros((2, 9), bool)
    loss[:, 4:] = True
    batch = {"ids": ids, "attend": attend, "loss": loss & attend}
    full = jax.jit(jax.value_and_grad(lambda p: response_nll(p, batch, model.config, None)[0]))(model.params)
    chunked = jax.jit(jax.value_and_grad(lambda p: response_nll(p, batch, model.config, 48)[0]))(model.params)
    logits = model.logits(ids)  # the model's own unembedding, soft-cap included
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    expected = -sum(logp[b, t - 1, ids[b, t]] for b in range(2) for t in range(1, 9) if batch["loss"][b, t])
    np.testing.assert_allclose(float(full[0]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(chunked[0]), expected, rtol=1e-5)
    for k, g in full[1].items():
        np.testing.assert_allclose(np.asarray(chunked[1][k]), np.asarray(g), atol=1e-5, rtol=1e-4, err_msg=k)


def test_learning_rate_schedules():
    from jlang.train.step import make_optimizer

    def lrs(**kw):
        _, schedule = make_optimizer(TrainSection(learning_rate=1.0, **kw))
        return [round(float(schedule(c)), 4) for c in range(kw["steps"])]

    assert lrs(steps=5, warmup=2) == [0.5, 1.0, 1.0, 1.0, 1.0]  # no step at 0
    assert lrs(steps=6, warmup=2, schedule="linear") == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]  # the last step learns
    assert lrs(steps=3, schedule="cosine") == [1.0, 0.75, 0.25]


# ----------------------------------------------------------------------------- training

REFERENCE_STEPS = 12


@pytest.fixture(scope="module")
def reference(tiny_dirs, parallel_file, tmp_path_factory):
    """One uninterrupted run on tiny llama2, shared by the tests below: (config, final params, loss.json)."""
    model_dir, _ = tiny_dirs["llama2"]
    out = tmp_path_factory.mktemp("reference") / "run"
    train = {
        "steps": REFERENCE_STEPS,
        "checkpoint_every": 3,
        "weight_decay": 0.01,
        "warmup": 2,
        "schedule": "cosine",
    }
    cfg = tiny_config(
        model_dir,
        parallel_file,
        out,
        export_hf=True,
        train=train,
        data={"eval_pairs_per_language": 6},
    )
    final = finetune(cfg, progress=False)
    assert final == out / "checkpoint"
    return cfg, params_of(final), json.loads((out / "loss.json").read_text())


def _hf_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def assert_hf_export_matches(out: Path) -> None:
    """`{out}/hf` loads in transformers (torch) with the logits of the jlang checkpoint `{out}/checkpoint`."""
    from transformers import AutoTokenizer

    tuned = jlang.load_model(out / "checkpoint", progress=False)
    hf_dir = out / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in hf_dir.iterdir()}
    ids = np.random.default_rng(0).integers(0, tuned.config.vocab_size, (2, 11))  # longer than sliding windows
    np.testing.assert_allclose(_hf_logits(hf_dir, ids), tuned.logits(ids), atol=1e-4, rtol=0)
    assert AutoTokenizer.from_pretrained(hf_dir)("w5 w7")["input_ids"] == tuned.tokenizer("w5 w7")["input_ids"]


def test_loss_goes_down_and_outputs_load(reference, tiny_dirs):
    cfg, tuned, result = reference
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == REFERENCE_STEPS and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
    assert result["eval"]["after"] < result["eval"]["before"] - 0.3, result["eval"]
    out = Path(cfg.out)
    assert (out / "loss.png").stat().st_size > 0 and (out / "summary.md").is_file()
    assert not (out / "train-checkpoint").exists()  # removed once the outputs are written
    base = params_of(tiny_dirs["llama2"][0])
    assert all(not np.array_equal(tuned[k], base[k]) for k in ("embed", "layers.q", "layers.down", "lm_head"))
    assert jlang.load_model(out / "checkpoint", progress=False).name == "llama2-finetuned"
    assert_hf_export_matches(out)  # llama2: untied lm_head, q/k transposed back
    with pytest.raises(FileExistsError, match="has finished"):  # a finished run is not clobbered
        finetune(cfg, progress=False)


def test_freeze_keeps_named_parameters(tiny_dirs, parallel_file, tmp_path):
    model_dir, _ = tiny_dirs["qwen3"]
    cfg = tiny_config(
        model_dir,
        parallel_file,
        tmp_path / "run",
        freeze=("embed", "lm_head", "final_norm"),
        export_hf=True,
        train={"steps": 2},
    )
    tuned, base = params_of(finetune(cfg, progress=False)), params_of(model_dir)
    for k in base:
        assert np.array_equal(tuned[k], base[k]) == (k in cfg.freeze), k
    assert_hf_export_matches(tmp_path / "run")  # qwen3: q/k norms


def test_neurons_mode_changes_only_their_weights(tiny_dirs, parallel_file, tmp_path):
    model_dir, _ = tiny_dirs["gemma3"]
    base = params_of(model_dir)
    L, _, F = base["layers.gate"].shape
    rng = np.random.default_rng(0)
    masks = NeuronMasks(["bb", "cc", "dd"], rng.random((3, L, F)) < 0.1, {"family": "gemma3"})
    masks.save(tmp_path / "masks.npz")
    # weight decay would move every weight of a plain adamw step: the update mask must stop it
    cfg = tiny_config(
        model_dir,
        parallel_file,
        tmp_path / "run",
        trainable="neurons",
        masks=str(tmp_path / "masks.npz"),
        mask_languages=("bb", "cc"),
        export_hf=True,
        train={"steps": 3, "weight_decay": 0.1},
    )
    tuned = params_of(finetune(cfg, progress=False))
    chosen = masks["bb"] | masks["cc"]  # [L, F]
    for k in base:
        if k not in ("layers.gate", "layers.up", "layers.down"):
            assert_bitwise_equal({k: tuned[k]}, {k: base[k]})
    for k in (
        "layers.gate",
        "layers.up",
    ):  # [L, d_model, F]: the chosen neurons' columns
        changed = (tuned[k] != base[k]).any(axis=1)
        assert not changed[~chosen].any(), k
        assert changed[chosen].mean() > 0.9, k
        outside = np.broadcast_to(~chosen[:, None, :], base[k].shape)
        assert np.array_equal(tuned[k][outside].view(np.uint32), base[k][outside].view(np.uint32))
    changed = (tuned["layers.down"] != base["layers.down"]).any(axis=2)  # [L, F, d_model]: their rows
    assert not changed[~chosen].any() and changed[chosen].mean() > 0.9
    assert_hf_export_matches(tmp_path / "run")  # gemma3: tied, sandwich norms, local/global layers


# ----------------------------------------------------------------------------- kill and resume


def _committed(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _launch(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    # The launches share JAX's persistent compilation cache: the later ones skip compiling the step.
    cache = {
        "JAX_COMPILATION_CACHE_DIR": str(log.parent / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    with open(log, "ab") as f:  # a file, not a pipe: a full pipe would stall the run
        return subprocess.Popen(
            [sys.executable, "-m", "jlang.cli", "finetune", str(config), *extra],
            cwd=REPO,
            env={**os.environ, **cache},
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def _wait_for(proc: subprocess.Popen, log: Path, ready, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}:\n" + log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_sigterm_and_sigkill_then_resume_equal_an_uninterrupted_run(reference, tmp_path):
    cfg, expected, expected_result = reference
    out = tmp_path / "run"
    run = json.loads(json.dumps(jlang.config.to_dict(cfg)))
    run["out"] = str(out)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run))
    ckpt, log = out / "train-checkpoint", tmp_path / "run.log"

    # 1. SIGTERM once the handler is in place (the start line): the first step ends, is saved, exit 143
    proc = _launch(config, log)
    try:
        _wait_for(
            proc,
            log,
            lambda: "fine-tuning llama2" in log.read_text(errors="replace"),
            "the start line",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text(errors="replace")[-3000:]
    finally:
        proc.kill()
    text = log.read_text(errors="replace")
    assert f"interrupted by SIGTERM after 1 of {REFERENCE_STEPS}" in text and "--resume" in text
    assert _committed(ckpt) == [1] and not (out / "checkpoint").exists()
    with pytest.raises(ResumeError, match="pass --resume"):  # never silently restarted over a half-done run
        finetune(jlang.config.from_dict(FinetuneConfig, run), progress=False)
    other = jlang.config.from_dict(FinetuneConfig, {**run, "train": {**run["train"], "learning_rate": 1e-3}})
    with pytest.raises(ResumeError, match="learning_rate"):  # nor continued with another run's settings
        finetune(other, progress=False, resume=True)

    # 2. resume, then SIGKILL (no chance to save anything) once a later checkpoint is committed
    proc = _launch(config, log, "--resume")
    try:
        _wait_for(
            proc,
            log,
            lambda: any(s >= 3 for s in _committed(ckpt)),
            "a checkpoint at step >= 3",
        )
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
    assert 3 <= max(_committed(ckpt)) < REFERENCE_STEPS and not (out / "checkpoint").exists()

    assert log.read_text(errors="replace").count("resuming from") == 1

    # 3. resume to the end (in this process: a third launch would only repeat the imports): the parameters
    # and losses of the uninterrupted run, bit for bit
    assert finetune(jlang.config.from_dict(FinetuneConfig, run), progress=False, resume=True) == out / "checkpoint"
    assert_bitwise_equal(params_of(out / "checkpoint"), expected)
    result = json.loads((out / "loss.json").read_text())
    assert result["history"] == expected_result["history"] and result["eval"] == expected_result["eval"]
    assert not ckpt.exists()


@pytest.mark.slow  # a tiny model, but two JAX processes cost ~25 s of CPU: kept out of the quick suite
def test_two_processes_equal_one_process(tiny_dirs, parallel_file, tmp_path):
    """2 `jax.distributed` processes on 127.0.0.1, one CPU device each, the batch rows split between them:
    the parameters of one process with the whole batch, up to float rounding (the gradient's sum is split
    in two); checkpoints are saved collectively, outputs written once."""
    from test_multihost import run_two_processes

    model_dir, _ = tiny_dirs["llama2"]
    # plain SGD: the update is linear in the gradient, so the two runs differ by rounding only (Adam's
    # g / sqrt(v) would turn rounding noise in a near-zero gradient into a step of the learning rate)
    train = {"steps": 3, "checkpoint_every": 2, "optimizer": "sgd", "learning_rate": 0.3}
    run = json.loads(
        json.dumps(
            jlang.config.to_dict(tiny_config(model_dir, parallel_file, tmp_path / "two", export_hf=True, train=train))
        )
    )
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(run))
    logs = run_two_processes(tmp_path, [["finetune", str(config), "--no-progress"]], devices=1)
    assert "wrote" in logs[0] and "wrote" not in logs[1]
    result = json.loads((tmp_path / "two" / "loss.json").read_text())
    assert result["processes"] == 2 and not (tmp_path / "two" / "train-checkpoint").exists()
    one = finetune(tiny_config(model_dir, parallel_file, tmp_path / "one", train=train), progress=False)
    expected = json.loads((tmp_path / "one" / "loss.json").read_text())
    np.testing.assert_allclose(
        [h["loss"] for h in result["history"]], [h["loss"] for h in expected["history"]], rtol=1e-5
    )
    two, single = params_of(tmp_path / "two" / "checkpoint"), params_of(one)
    for k in single:
        np.testing.assert_allclose(two[k], single[k], atol=1e-6, rtol=0, err_msg=k)
    assert_hf_export_matches(tmp_path / "two")


# ----------------------------------------------------------------------------- Hugging Face export


@pytest.mark.parametrize("family", ["llama3", "mistral", "qwen2", "gemma", "gemma2"])
def test_export_of_every_other_family(tiny_dirs, tmp_path, family):
    from jlang.models.export import save_hf

    model = jlang.load_model(tiny_dirs[family][0], progress=False)
    save_hf(model, tmp_path / "hf")
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, (2, 13))  # longer than sliding windows
    np.testing.assert_allclose(_hf_logits(tmp_path / "hf", ids), model.logits(ids), atol=1e-4, rtol=0)


def test_bfloat16_export_keeps_the_weights(tiny_dirs, tmp_path):
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from jlang.models.export import save_hf

    model = jlang.load_model(tiny_dirs["gemma3"][0], dtype="bfloat16", progress=False)
    save_hf(model, tmp_path / "hf")
    written = load_file(tmp_path / "hf" / "model.safetensors")
    gate = np.asarray(model.params["layers.gate"])  # [L, d_model, F]
    assert written["model.layers.1.mlp.gate_proj.weight"].dtype == gate.dtype  # bfloat16, not widened
    assert np.array_equal(written["model.layers.1.mlp.gate_proj.weight"].view(np.uint16), gate[1].T.view(np.uint16))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert hf.dtype == torch.bfloat16 and "lm_head.weight" not in written  # tied


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_export_of_a_gguf_source_undoes_its_quirks(tmp_path, arch):
    """GGUF llama stores q/k rows permuted, Gemma norms as w + 1: the export is a plain HF checkpoint."""
    pytest.importorskip("gguf")
    from safetensors.numpy import load_file
    from test_gguf import TINY, write_tiny_gguf

    from jlang.models.export import save_hf

    path = tmp_path / f"tiny-{arch}.gguf"
    hf_weights = write_tiny_gguf(path, TINY[arch])
    model = jlang.load_model(path, progress=False)
    save_hf(model, tmp_path / "hf")
    ids = np.random.default_rng(2).integers(3, 200, (2, 9))
    np.testing.assert_allclose(_hf_logits(tmp_path / "hf", ids), model.logits(ids), atol=1e-4, rtol=0)
    written = load_file(tmp_path / "hf" / "model.safetensors")
    for name in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.input_layernorm.weight",
    ):
        # stored as F32 (norms as w + 1): equal up to float32 rounding; a wrong row order or offset is off by O(0.1)
        np.testing.assert_allclose(written[name], hf_weights[name], atol=1e-6, rtol=0, err_msg=name)


# ----------------------------------------------------------------------------- bad input


def test_bad_configs_fail_before_loading(tmp_path, parallel_file):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"out": str(tmp_path / "x"), "model": {"source": "/nonexistent"}}))
    with pytest.raises(ConfigError, match=r"\['all', 'neurons'\]"):
        load_finetune_config(base, ["trainable=heads"])
    with pytest.raises(ConfigError, match="train.steps must be >= 1"):
        load_finetune_config(base, ["train.steps=0"])
    with pytest.raises(ConfigError, match="train.steps must be >= 1"):
        finetune(FinetuneConfig(train=TrainSection(steps=-3)), progress=False)  # checked without YAML too
    with pytest.raises(ConfigError, match="trainable 'heads' is not one of"):
        finetune(FinetuneConfig(trainable="heads"), progress=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs masks"):
        load_finetune_config(base, ["trainable=neurons", "mask_languages=[fr]"])
    with pytest.raises(ConfigError, match="only used with trainable: neurons"):
        load_finetune_config(base, ["masks=m.npz"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_finetune_config(base, ["train.epochs=3"])
    with pytest.raises(ConfigError, match="freeze names unknown parameters"):
        load_finetune_config(base, ["freeze=[embeddings]"])
    with pytest.raises(ConfigError, match="data.template"):
        load_finetune_config(base, ["data.template='{target}'"])


def test_bad_masks_and_data_are_named(tiny_dirs, parallel_file, tmp_path):
    model_dir, _ = tiny_dirs["llama2"]
    NeuronMasks(["bb"], np.ones((1, 5, 10), bool), {"model": "another"}).save(tmp_path / "other.npz")
    cfg = tiny_config(
        model_dir,
        parallel_file,
        tmp_path / "a",
        trainable="neurons",
        masks=str(tmp_path / "other.npz"),
        mask_languages=("bb",),
    )
    with pytest.raises(MaskShapeError, match="5 layers x 10 neurons"):
        finetune(cfg, progress=False)
    L, F = 3, 83
    NeuronMasks(["bb", "cc"], np.ones((2, L, F), bool)).save(tmp_path / "fits.npz")
    cfg = tiny_config(
        model_dir,
        parallel_file,
        tmp_path / "b",
        trainable="neurons",
        masks=str(tmp_path / "fits.npz"),
        mask_languages=("fr",),
    )
    with pytest.raises(UnknownLanguageError, match="unknown language 'fr'"):
        finetune(cfg, progress=False)
    from jlang.data.sources import CorpusError

    with pytest.raises(CorpusError, match="no row with both 'aa' and 'xx'"):
        finetune(
            tiny_config(
                model_dir,
                parallel_file,
                tmp_path / "c",
                data={"languages": ("bb", "xx")},
            ),
            progress=False,
        )
    with pytest.raises(CorpusError, match="turns the texts into tokens"):  # this tokenizer reads no "w5" words
        pair_rows(
            {"bb": [("w5 w3\n", "w45")]},
            jlang.load_model(tiny_dirs["qwen2"][0], progress=False).tokenizer,
            seq_len=16,
        )
    with pytest.raises(CorpusError, match="include the source language"):
        finetune(
            tiny_config(
                model_dir,
                parallel_file,
                tmp_path / "d",
                data={"languages": ("aa", "bb")},
            ),
            progress=False,
        )


def test_cli_reports_errors(tiny_dirs, tmp_path, capsys):
    from jlang.cli import main

    assert main(["export-hf", str(tiny_dirs["mistral"][0]), "--out", str(tmp_path / "hf"), "--no-progress"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file() and "wrote" in capsys.readouterr().out
    assert main(["export-hf", str(tiny_dirs["mistral"][0]), "--out", str(tmp_path / "hf")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err

    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  steps: 0\n")
    assert main(["finetune", str(config)]) == 2
    assert "train.steps must be >= 1" in capsys.readouterr().err
    assert main(["finetune", str(config), "--set", "train.steps=2", "--set", "trainable=heads"]) == 2
    assert "'heads' is not one of ['all', 'neurons']" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the default model


@pytest.mark.slow
def test_short_run_on_the_default_model_reduces_loss(tmp_path):
    """`configs/align_default.yaml` for a few steps: held-out and training loss both fall, and the
    Hugging Face export of the fine-tuned GGUF-sourced Gemma 3 gives jlang's logits in transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    overrides = [
        f"out={out}",
        f"train.steps={SLOW_DEFAULT_STEPS}",
        "train.checkpoint_every=0",
        "data.eval_pairs_per_language=4",
    ]
    # Its own process: `peak_rss_gb` is the process's high-water mark, which earlier tests in this
    # pytest process would otherwise set (the slow suite reached 5.09 GB before this test ran).
    log = tmp_path / "finetune.log"
    proc = _launch(
        REPO / "configs" / "align_default.yaml", log, "--no-progress", *[a for o in overrides for a in ("--set", o)]
    )
    assert proc.wait(timeout=1200) == 0, log.read_text()[-3000:]
    result = json.loads((out / "loss.json").read_text())
    losses = [h["loss"] for h in result["history"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert result["eval"]["after"] < result["eval"]["before"], result["eval"]
    assert result["peak_rss_gb"] < 5.0, result["peak_rss_gb"]

    tuned = jlang.load_model(out / "checkpoint", progress=False)
    ids = np.asarray(tuned.tokenizer(["Translate into French: Save changes\n"])["input_ids"])
    ours = tuned.logits(ids)
    del tuned
    hf = AutoModelForCausalLM.from_pretrained(out / "hf", dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max()  # README: 4.4e-6 x max|logit| for the source
    assert theirs[0, -1].argmax() == ours[0, -1].argmax()
