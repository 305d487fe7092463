"""Broken checkpoints fail early with a message that names the problem."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jlang
from jlang.models import CheckpointError, UnsupportedModelError


@pytest.fixture()
def llama_dir(tiny_dirs, tmp_path):
    src, _ = tiny_dirs["llama2"]
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _rewrite(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_unknown_architecture_lists_supported(llama_dir):
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (llama_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="FalconForCausalLM.*Gemma3ForCausalLM.*LlamaForCausalLM"):
        jlang.load_model(llama_dir, progress=False)


def test_missing_tensor_is_named(llama_dir):
    _rewrite(llama_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors \(1\): model\.layers\.1\.mlp\.up_proj\.weight"):
        jlang.load_model(llama_dir, progress=False)


def test_extra_tensor_is_named(llama_dir):
    _rewrite(llama_dir, lambda t: t.update({"model.layers.0.mlp.extra.weight": np.zeros((2, 2), np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \(1\): model\.layers\.0\.mlp\.extra\.weight"):
        jlang.load_model(llama_dir, progress=False)


def test_wrong_shape_names_both_shapes(llama_dir):
    _rewrite(llama_dir, lambda t: t.update({"model.layers.2.self_attn.k_proj.weight": np.zeros((17, 48), np.float32)}))
    with pytest.raises(
        CheckpointError, match=r"model\.layers\.2\.self_attn\.k_proj\.weight: expected \(16, 48\), found \(17, 48\)"
    ):
        jlang.load_model(llama_dir, progress=False)


def test_nan_weights_are_refused(llama_dir):
    def poison(t):
        t["model.norm.weight"] = t["model.norm.weight"].copy()
        t["model.norm.weight"][3] = np.nan

    _rewrite(llama_dir, poison)
    with pytest.raises(CheckpointError, match="model.norm.weight holds NaN"):
        jlang.load_model(llama_dir, progress=False)


@pytest.mark.parametrize("keep", [4, 100, -64])
def test_truncated_safetensors(llama_dir, keep):
    f = llama_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:keep] if keep > 0 else data[:keep])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        jlang.load_model(llama_dir, progress=False)


def test_sharded_index_names_missing_file(llama_dir):
    tensors = load_file(llama_dir / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    save_file({n: tensors[n] for n in names[:half]}, llama_dir / "model-00001-of-00002.safetensors")
    save_file({n: tensors[n] for n in names[half:]}, llama_dir / "model-00002-of-00002.safetensors")
    (llama_dir / "model.safetensors").unlink()
    index = {
        "metadata": {},
        "weight_map": {n: f"model-0000{1 + (i >= half)}-of-00002.safetensors" for i, n in enumerate(names)},
    }
    (llama_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    jlang.load_model(llama_dir, progress=False)  # sharded checkpoints load
    (llama_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        jlang.load_model(llama_dir, progress=False)


def test_paths_that_do_not_exist_or_are_not_models(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        jlang.load_model(tmp_path / "nope", progress=False)
    with pytest.raises(CheckpointError, match="no config.json"):
        jlang.load_model(tmp_path, progress=False)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="must be a .gguf"):
        jlang.load_model(tmp_path / "weights.bin", progress=False)


def test_bad_dtype_and_ids(tiny_dirs):
    path, _ = tiny_dirs["llama2"]
    with pytest.raises(ValueError, match="dtype must be one of"):
        jlang.load_model(path, dtype="float16", progress=False)
    model = jlang.load_model(path, progress=False)
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        model.logits(np.zeros(5, int))
    with pytest.raises(ValueError, match="token ids must lie in"):
        model.logits(np.full((1, 3), 10_000))
