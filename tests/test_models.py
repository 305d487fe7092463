"""The decoder against transformers' PyTorch models, on tiny random checkpoints of every family."""

import dataclasses

import jax
import numpy as np
import pytest

import jlang
from jlang.models.decoder import forward

torch = pytest.importorskip("torch")

FAMILIES = ["llama2", "llama3", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]
EXPECTED_FAMILY = {"llama2": "llama", "llama3": "llama"}


def _ids(vocab, batch=2, seq=13, seed=0):
    # seq 13 > every tiny sliding window (4 or 5), so windowed layers differ from global ones
    return np.random.default_rng(seed).integers(0, vocab, (batch, seq))


def _torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers(tiny_dirs, name):
    path, torch_model = tiny_dirs[name]
    model = jlang.load_model(path, progress=False)
    assert model.family == EXPECTED_FAMILY.get(name, name)
    ids = _ids(model.config.vocab_size)
    ref = _torch_logits(torch_model, ids)
    out = model.logits(ids)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-4


@pytest.mark.parametrize("name", ["mistral", "gemma2", "gemma3", "llama3"])
def test_parity_test_is_sensitive(tiny_dirs, name):
    """Turning off the sliding window (or llama3 rope scaling) must break parity, or the
    parity test above would not be testing it."""
    path, torch_model = tiny_dirs[name]
    model = jlang.load_model(path, progress=False)
    cfg = model.config
    if name == "llama3":
        wrong = dataclasses.replace(cfg, rope_global=dataclasses.replace(cfg.rope_global, kind="default"))
    else:
        wrong = dataclasses.replace(cfg, sliding_window=None, local_layers=(False,) * cfg.num_layers)
    ids = _ids(cfg.vocab_size)
    logits, _ = forward(model.params, jax.numpy.asarray(ids), wrong)
    assert np.abs(np.asarray(logits) - _torch_logits(torch_model, ids)).max() > 1e-3


def test_public_facts(tiny_dirs):
    path, torch_model = tiny_dirs["gemma3"]
    model = jlang.load_model(path, progress=False)
    assert model.num_layers == 4
    assert model.num_neurons == 83
    assert model.tokenizer is not None and model.tokenizer("w5 w6")["input_ids"][-1] == 6
    assert model.num_params == sum(p.numel() for p in torch_model.parameters())


def test_bfloat16_close(tiny_dirs):
    path, torch_model = tiny_dirs["llama2"]
    model = jlang.load_model(path, dtype="bfloat16", progress=False)
    assert model.dtype == "bfloat16"
    ids = _ids(model.config.vocab_size)
    ref = _torch_logits(torch_model, ids)
    assert np.abs(model.logits(ids) - ref).max() < 0.1 * np.abs(ref).max()


@pytest.mark.parametrize("name", ["gemma3", "qwen2"])
def test_mesh_matches_single_device(tiny_dirs, name):
    path, _ = tiny_dirs[name]
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    mesh = jlang.parallel.make_mesh(data=2, model=4)
    single = jlang.load_model(path, progress=False)
    sharded = jlang.load_model(path, mesh=mesh, progress=False)
    # heads (6 x 16 = 96 columns) split over `model`; 83 neurons do not divide by 4, so they stay whole
    assert sharded.params["layers.q"].sharding.spec == jax.sharding.PartitionSpec(None, None, "model")
    assert sharded.params["layers.gate"].sharding.spec == jax.sharding.PartitionSpec(None, None, None)
    ids = _ids(single.config.vocab_size, batch=3)  # 3 rows: padded to the data axis and cut back
    assert np.abs(sharded.logits(ids) - single.logits(ids)).max() <= 1e-5


def test_orbax_round_trip(tiny_dirs, tmp_path):
    path, _ = tiny_dirs["gemma2"]
    model = jlang.load_model(path, progress=False)
    saved = model.save(tmp_path / "ckpt")
    restored = jlang.load_model(saved)
    ids = _ids(model.config.vocab_size)
    np.testing.assert_array_equal(restored.logits(ids), model.logits(ids))
    assert restored.family == "gemma2" and restored.tokenizer("w7")["input_ids"][-1] == 7
    with pytest.raises(FileExistsError):
        model.save(saved)
    # restore onto a mesh, in another dtype
    if len(jax.devices()) >= 8:
        mesh = jlang.parallel.make_mesh(data=2, model=4)
        sharded = jlang.load_model(saved, mesh=mesh)
        assert np.abs(sharded.logits(ids) - model.logits(ids)).max() <= 1e-5
