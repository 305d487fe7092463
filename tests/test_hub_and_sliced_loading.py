"""Models by Hub id from a prepared Hugging Face cache (offline), and sliced, sharded loading.

The cache is laid out as huggingface_hub writes it (`models--org--name/refs/main`,
`snapshots/<commit>/...`); nothing reaches the network (`HF_HUB_OFFLINE=1`).
Sliced loading is compared bit for bit with the whole tensors read from the files.
"""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest

import jlang
from jlang.cli import main as jlang_main
from jlang.models import convert
from jlang.models.decoder import param_shapes
from jlang.models.sources import CheckpointError, SafetensorsSource

torch = pytest.importorskip("torch")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(root, repo_id: str, files_from, commit: str = COMMIT, ref: str = "main"):
    """A Hugging Face cache holding `files_from`'s files as `repo_id` at `commit` (branch `ref`)."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files_from, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def test_hub_id_resolves_offline_and_records_the_commit(tiny_dirs, offline_cache, capsys):
    path, _ = tiny_dirs["llama2"]
    _hub_cache(offline_cache, "org/tiny-llama", path)
    ids = np.random.default_rng(0).integers(0, 131, (2, 7))
    local = jlang.load_model(path, progress=False)
    hub = jlang.load_model("org/tiny-llama", progress=False)
    np.testing.assert_array_equal(hub.logits(ids), local.logits(ids))
    assert hub.name == "org/tiny-llama" and hub.source == f"org/tiny-llama@{COMMIT}"
    pinned = jlang.load_model(f"org/tiny-llama@{COMMIT}", progress=False)
    assert pinned.source == hub.source
    stats = jlang.collect_stats(hub, {"en": ["w5 w6 w7 w8 w9 w10 w11 w12"]}, batch_size=1, seq_len=4, progress=False)
    assert stats.meta["model"] == "org/tiny-llama" and COMMIT in stats.meta["source"]
    assert jlang_main(["info", "org/tiny-llama"]) == 0
    assert f"org/tiny-llama@{COMMIT}" in capsys.readouterr().out


def test_hub_errors_say_what_to_do(tiny_dirs, offline_cache, tmp_path):
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        jlang.load_model("org/absent", progress=False)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_dirs["llama2"][0] / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    _hub_cache(offline_cache, "org/pickled", pickled)
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors files \(PyTorch \.bin checkpoints are not read"):
        jlang.load_model("org/pickled", progress=False)
    with pytest.raises(ValueError, match="revision= applies to Hugging Face Hub ids"):
        jlang.load_model(tiny_dirs["llama2"][0], revision="main", progress=False)


def _whole_tensor_params(path, cfg) -> dict[str, np.ndarray]:
    """Every parameter from whole tensors, stacked on the host: what loading did before slicing."""
    source = SafetensorsSource(path)
    out = {}
    for name in param_shapes(cfg):
        tensors = [source.read(hf) for hf in convert.hf_names(cfg, name)]
        tensors = [t.T if name in convert.TRANSPOSED else t for t in tensors]
        out[name] = np.stack(tensors) if name.startswith("layers.") else tensors[0]
    return out


MESHES = {
    "one device": None,
    "data 2 x model 4": (2, 4, 8),
    "model 8": (1, 8, 8),
    "model 3 (kv dims replicated)": (2, 3, 6),
}


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("family", ["llama2", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "mistral", "llama3"])
def test_sliced_loading_equals_whole_tensors(tiny_dirs, family, mesh_name):
    if MESHES[mesh_name] is not None and jax.device_count() < MESHES[mesh_name][2]:
        pytest.skip("needs 8 (fake) devices")
    path, _ = tiny_dirs[family]
    mesh = None
    if MESHES[mesh_name] is not None:
        data, model_axis, n = MESHES[mesh_name]
        mesh = jlang.parallel.make_mesh(data=data, model=model_axis, devices=jax.devices()[:n])
    model = jlang.load_model(path, mesh=mesh, progress=False)
    reference = _whole_tensor_params(path, model.config)
    for name, value in model.params.items():
        np.testing.assert_array_equal(np.asarray(value), reference[name].astype(np.float32), err_msg=name)
    if mesh_name.startswith("model 3"):  # 2 kv heads x head_dim 8 = 16 does not divide 3: replicated, still exact
        assert model.params["layers.k"].sharding.spec == jax.sharding.PartitionSpec(None, None, None)
        assert model.params["layers.q"].sharding.spec == jax.sharding.PartitionSpec(None, None, "model")


def test_bf16_checkpoint_loads_as_bf16_without_a_float32_copy(tmp_path, monkeypatch):
    from tiny_models import build_torch_model, family_configs, tiny_tokenizer

    config = family_configs()["llama2"]
    build_torch_model(config).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    tiny_tokenizer(config.vocab_size).save_pretrained(tmp_path / "bf16")
    dtypes_read, dtypes_placed = set(), set()
    read_region, read_param_region = SafetensorsSource.read_region, convert.read_param_region

    def spy_region(self, name, index, **kwargs):
        out = read_region(self, name, index, **kwargs)
        dtypes_read.add(str(out.dtype))
        return out

    def spy_placed(*args, **kwargs):
        out = read_param_region(*args, **kwargs)
        dtypes_placed.add(str(out.dtype))
        return out

    monkeypatch.setattr(SafetensorsSource, "read_region", spy_region)
    monkeypatch.setattr(convert, "read_param_region", spy_placed)
    model = jlang.load_model(tmp_path / "bf16", dtype="bfloat16", progress=False)
    assert dtypes_read == {"bfloat16"} and dtypes_placed == {"bfloat16"}
    assert {str(v.dtype) for v in model.params.values()} == {"bfloat16"}
    reference = _whole_tensor_params(tmp_path / "bf16", model.config)
    for name, value in model.params.items():
        assert np.asarray(value).tobytes() == np.ascontiguousarray(reference[name]).tobytes(), name


@pytest.mark.parametrize("family", ["llama2", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "mistral", "llama3"])
def test_round_trip_to_a_sharded_hf_export(tiny_dirs, tmp_path, family):
    """HF -> jlang (on a mesh) -> HF in several safetensors files with an index: transformers loads it, same logits."""
    import json

    from transformers import AutoModelForCausalLM

    from jlang.models.export import save_hf

    path, torch_model = tiny_dirs[family]
    mesh = jlang.parallel.make_mesh(data=2, model=4) if jax.device_count() >= 8 else None
    model = jlang.load_model(path, mesh=mesh, progress=False)
    out = save_hf(model, tmp_path / "hf", max_shard_size="60KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all((out / f).is_file() for f in files)
    assert all((out / f).stat().st_size <= 60_000 + 16_384 for f in files)  # header aside, or a single tensor
    back = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    ids = torch.tensor(np.random.default_rng(0).integers(0, 131, (2, 9)))
    with torch.no_grad():
        np.testing.assert_allclose(back(ids).logits.numpy(), torch_model(ids).logits.numpy(), atol=1e-5, rtol=0)


def test_convert_command_writes_a_checkpoint_that_loads(tiny_dirs, offline_cache, tmp_path, capsys):
    """`jlang convert org/name OUT --mesh 2,4`: an orbax checkpoint that restores the same parameters."""
    path, _ = tiny_dirs["qwen3"]
    _hub_cache(offline_cache, "org/tiny-qwen3", path)
    out = tmp_path / "converted" / "qwen3.jlang"
    mesh = ["--mesh", "2,4"] if jax.device_count() >= 8 else []
    assert jlang_main(["convert", "org/tiny-qwen3", str(out), *mesh, "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    restored = jlang.load_model(out, progress=False)
    assert restored.source.startswith(f"org/tiny-qwen3@{COMMIT}")  # the checkpoint keeps where it came from
    reference = jlang.load_model(path, progress=False)
    for name, value in reference.params.items():
        np.testing.assert_array_equal(np.asarray(restored.params[name]), np.asarray(value), err_msg=name)
    assert jlang_main(["convert", "org/tiny-qwen3", str(out)]) == 2  # never over an existing checkpoint
    assert "exists" in capsys.readouterr().err
    assert jlang_main(["export-hf", str(out), "--out", str(tmp_path / "hf"), "--max-shard-size", "50KB"]) == 0
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()


def test_outputs_to_urls_are_written_locally_then_uploaded_whole(tmp_path, monkeypatch):
    """A `gs://` target goes through `_uploaded` (a local file, copied to the etils path when complete).

    No object store is at hand, so the URL branch is forced onto local paths: it must write the same files."""
    from jlang.io import atomic
    from jlang.masks import NeuronMasks
    from jlang.stats import ActivationStats

    monkeypatch.setattr(atomic, "is_remote", lambda path: True)
    stats = ActivationStats(
        languages=["en", "fr"],
        tokens=np.array([10, 12]),
        over_zero=np.arange(2 * 3 * 4).reshape(2, 3, 4),
        sum=np.ones((2, 3, 4)),
        sum_sq=np.ones((2, 3, 4)),
        max=np.ones((2, 3, 4), np.float32),
        meta={"model": "m"},
    )
    stats.save(tmp_path / "run" / "stats.npz")
    stats.save(tmp_path / "run" / "stats-dir")
    masks = NeuronMasks(["en", "fr"], np.arange(24).reshape(2, 3, 4) % 5 == 0, {"model": "m"})
    masks.save(tmp_path / "run" / "masks.npz")
    monkeypatch.undo()
    back = ActivationStats.load(tmp_path / "run" / "stats.npz")
    np.testing.assert_array_equal(back.over_zero, stats.over_zero)
    np.testing.assert_array_equal(ActivationStats.load(tmp_path / "run" / "stats-dir").sum, stats.sum)
    assert NeuronMasks.load(tmp_path / "run" / "masks.npz") == masks
    assert not list((tmp_path / "run").glob(".*tmp-*"))  # no local temporaries next to the targets
