"""jlang.io.torchfile: read torch.save files without torch or pickle code; write files torch.load reads."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from shared_data import shared_fixtures

from jlang.io import torchfile
from jlang.io.torchfile import TorchFileError

# -- reading what torch writes ----------------------------------------------------------------------


def _torch_examples(torch):
    shared = torch.arange(8.0)
    return {
        "long": torch.arange(5),
        "int32": torch.tensor([[1, -2], [3, 4]], dtype=torch.int32),
        "float16_view": torch.randn(3, 4).half()[:, 1:],
        "bf16_transposed": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3).t(),
        "bool": torch.tensor([True, False, True]),
        "uint16": torch.tensor([1, 2, 65535]).to(torch.uint16),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "float64": torch.tensor([1.5, -2.25], dtype=torch.float64),
        "strided": torch.arange(10)[3:9:2],
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(7),
        "param": torch.nn.Parameter(torch.ones(2)),
        "shared_views": [shared[2:], shared.view(2, 4).t()],
        "meta": {
            "n": 12345,
            "name": "x",
            "ratio": 0.5,
            "flag": True,
            "none": None,
            "tup": (1, 2, 3, 4),
            "bytes": b"ab",
        },
    }


def _expected(torch, value):
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
    if isinstance(value, dict):
        return {k: _expected(torch, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_expected(torch, v) for v in value)
    return value


def _assert_same(got, want, where="obj"):
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), where
        assert got.dtype == want.dtype and got.shape == want.shape, (
            where,
            got.dtype,
            want.dtype,
            got.shape,
            want.shape,
        )
        np.testing.assert_array_equal(got, want, err_msg=where)
        assert got.flags.writeable  # an owned array, not a read-only view of the file's bytes
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            _assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reads_torch_save_all_dtypes_views_and_containers(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    obj = _torch_examples(torch)
    path = tmp_path / "t.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    got = torchfile.load(path)
    _assert_same(got, _expected(torch, obj))
    assert got["bf16_transposed"].dtype == np.float32  # bfloat16 widened exactly
    got["long"][0] = 99  # owned, writable arrays


def test_big_endian_archive(tmp_path):
    torch = pytest.importorskip("torch")
    src = tmp_path / "le.pt"
    torch.save({"x": torch.tensor([1, 2, 3], dtype=torch.int32)}, src)
    dst = tmp_path / "be.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                data = np.frombuffer(data, "<i4").astype(">i4").tobytes()
            zout.writestr(info.filename, data)
    np.testing.assert_array_equal(torchfile.load(dst)["x"], [1, 2, 3])


def test_published_lape_mask_loads():
    path = shared_fixtures("lape-published", "LLaMA-2-7B.neuron.pth")
    obj = torchfile.load(path)
    assert len(obj) == 7 and all(len(row) == 32 for row in obj)
    assert [sum(t.size for t in row) for row in obj] == [95, 583, 1022, 838, 836, 1068, 582]
    assert all(t.dtype == np.int64 and np.all(np.diff(t) > 0) for row in obj for t in row)


# -- refusing code ------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _zip_with_pickle(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize("protocol", [2, 4])
def test_refuses_os_system_without_running_it(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"x": _Evil(f"touch {marker}")}, protocol=protocol)
    assert b"system" in payload
    path = _zip_with_pickle(tmp_path / "evil.pt", payload)
    with pytest.raises(TorchFileError) as err:
        torchfile.load(path)
    message = str(err.value)
    assert str(path) in message and "system" in message and "refusing" in message
    assert not marker.exists()


def test_refuses_malicious_legacy_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pt"
    path.write_bytes(pickle.dumps(_Evil(f"touch {marker}"), protocol=2))
    with pytest.raises(TorchFileError, match="system"):
        torchfile.load(path)
    assert not marker.exists()


def test_refuses_hidden_global_inside_tensor_args(tmp_path):
    # A well-formed tensor record whose backward_hooks slot calls builtins.eval.
    payload = (
        b"\x80\x02]q\x00ctorch._utils\n_rebuild_tensor_v2\n(X\x04\x00\x00\x00evalcbuiltins\neval\n"
        b"X\x05\x00\x00\x001+1\x00\x85Rt."
    )
    path = _zip_with_pickle(tmp_path / "evil2.pt", payload)
    with pytest.raises(TorchFileError, match=r"builtins\.eval"):
        torchfile.load(path)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"definitely not a pickle")
    with pytest.raises(TorchFileError, match="junk.pt"):
        torchfile.load(path)
    with pytest.raises(FileNotFoundError):
        torchfile.load(tmp_path / "missing.pt")


# -- writing files torch reads ------------------------------------------------------------------------


def test_written_tensor_lists_load_in_torch(tmp_path):
    torch = pytest.importorskip("torch")
    masks = [
        [np.array([1, 5, 7]), np.array([], dtype=np.int64), np.array([0])],
        [np.arange(3, dtype=np.int32), np.array([2**40]), np.array([], dtype=np.int64)],
    ]
    path = tmp_path / "mask.pth"
    torchfile.save_tensor_lists(path, masks)
    loaded = torch.load(path, weights_only=True)
    assert isinstance(loaded, list) and len(loaded) == 2 and all(len(r) == 3 for r in loaded)
    for row, want_row in zip(loaded, masks):
        for t, want in zip(row, want_row):
            assert t.dtype == torch.int64 and t.ndim == 1
            assert t.tolist() == np.asarray(want).tolist()
    back = torchfile.load(path)
    assert [[t.tolist() for t in r] for r in back] == [[np.asarray(t).tolist() for t in r] for r in masks]


def test_written_dicts_and_scalars_load_in_torch(tmp_path):
    torch = pytest.importorskip("torch")
    obj = {
        "n": 123,
        "big": 2**40,
        "neg": -5,
        "over_zero": np.arange(12, dtype=np.int64).reshape(3, 4),
        "f32": np.linspace(0, 1, 5, dtype=np.float32),
        "scalar": np.array(3.0),
        "empty": np.zeros((2, 0, 3)),
        "transposed": np.arange(6).reshape(2, 3).T,
        "flag": np.array([True, False]),
        "name": "ok",
        "x": 1.25,
        "tup": (1, 2, 3, 4),
        "none": None,
    }
    path = tmp_path / "stats.pt"
    torchfile.save(path, obj)
    loaded = torch.load(path, weights_only=True)
    for key, want in obj.items():
        if isinstance(want, np.ndarray):
            np.testing.assert_array_equal(loaded[key].numpy(), want)
            assert loaded[key].shape == want.shape
        else:
            assert loaded[key] == want, key
    _assert_same(torchfile.load(path), obj)


def test_writer_rejects_unsupported_values_atomically(tmp_path):
    path = tmp_path / "m.pth"
    torchfile.save_tensor_lists(path, [[np.array([1])]])
    before = path.read_bytes()
    with pytest.raises(TypeError):
        torchfile.save_tensor_lists(path, [[np.array([0.5])]])
    with pytest.raises(TypeError):
        torchfile.save(path, {"x": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth"]  # no temporary left behind
