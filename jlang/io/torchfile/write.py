"""Writing `torch.save` files (zip format, protocol-2 pickle opcodes) that `torch.load(weights_only=True)` reads.

See `jlang.io.torchfile` for the format.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jlang.io.atomic import atomic_file, output_path, writes_results
from jlang.io.torchfile.formats import WRITE_STORAGE, is_int

# ---------------------------------------------------------------------------------------------
# Writer: protocol-2 pickle opcodes, as torch's own pickler emits them.


class _PickleWriter:
    """Minimal protocol-2 pickler for containers, scalars and arrays-as-tensors."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.storages: list[np.ndarray] = []

    def op(self, b: bytes) -> None:
        self.out.write(b)

    def global_(self, module: str, name: str) -> None:
        self.op(b"c" + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n")

    def int_(self, x: int) -> None:
        if 0 <= x < 256:
            self.op(b"K" + bytes([x]))
        elif 0 <= x < 65536:
            self.op(b"M" + struct.pack("<H", x))
        elif -(2**31) <= x < 2**31:
            self.op(b"J" + struct.pack("<i", x))
        else:
            n = (x.bit_length() + 8) // 8
            self.op(b"\x8a" + bytes([n]) + x.to_bytes(n, "little", signed=True))

    def str_(self, s: str) -> None:
        b = s.encode("utf-8")
        self.op(b"X" + struct.pack("<I", len(b)) + b)

    def tuple_(self, items: Sequence[Any]) -> None:
        if not items:
            self.op(b")")
            return
        if len(items) > 3:
            self.op(b"(")
        for v in items:
            self.save(v)
        self.op({1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(items), b"t"))

    def tensor(self, arr: np.ndarray) -> None:
        arr = np.asarray(arr)
        if arr.dtype.newbyteorder("=") not in WRITE_STORAGE:
            raise TypeError(
                f"cannot write a {arr.dtype} array as a torch tensor "
                f"(supported: {sorted(str(d) for d in WRITE_STORAGE)})"
            )
        arr = np.asarray(arr, order="C").astype(arr.dtype.newbyteorder("<"), copy=False)  # keeps 0-d
        key = str(len(self.storages))
        self.storages.append(arr)
        stride, acc = [], 1
        for n in reversed(arr.shape):
            stride.append(acc)
            acc *= max(n, 1)
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.op(b"(")
        # persistent id ('storage', torch.<T>Storage, key, 'cpu', numel)
        self.op(b"(")
        self.str_("storage")
        self.global_("torch", WRITE_STORAGE[np.dtype(arr.dtype.newbyteorder("="))])
        self.str_(key)
        self.str_("cpu")
        self.int_(int(arr.size))
        self.op(b"t")
        self.op(b"Q")
        self.int_(0)  # storage offset
        self.tuple_([int(n) for n in arr.shape])
        self.tuple_(list(reversed(stride)))
        self.op(b"\x89")  # requires_grad=False
        self.global_("collections", "OrderedDict")
        self.op(b")R")  # backward_hooks=OrderedDict()
        self.op(b"t")
        self.op(b"R")

    def save(self, obj: Any) -> None:
        if obj is None:
            self.op(b"N")
        elif obj is True or obj is False:
            self.op(b"\x88" if obj else b"\x89")
        elif isinstance(obj, (int, np.integer)) and not isinstance(obj, (bool, np.bool_)):
            self.int_(int(obj))
        elif isinstance(obj, (float, np.floating)):
            self.op(b"G" + struct.pack(">d", float(obj)))
        elif isinstance(obj, str):
            self.str_(obj)
        elif isinstance(obj, np.ndarray):
            self.tensor(obj)
        elif isinstance(obj, list):
            self.op(b"]")
            if obj:
                self.op(b"(")
                for v in obj:
                    self.save(v)
                self.op(b"e")
        elif isinstance(obj, tuple):
            self.tuple_(obj)
        elif isinstance(obj, Mapping):
            self.op(b"}")
            if obj:
                self.op(b"(")
                for k, v in obj.items():
                    if not isinstance(k, (str, int)) or isinstance(k, bool):
                        raise TypeError(f"dict keys must be str or int, got {type(k).__name__}")
                    self.save(k)
                    self.save(v)
                self.op(b"u")
        else:
            raise TypeError(
                f"cannot write {type(obj).__name__} to a torch file; use nested lists/tuples/dicts of "
                "np.ndarray, int, float, str, bool or None"
            )

    def finish(self, obj: Any) -> bytes:
        self.op(b"\x80\x02")
        self.save(obj)
        self.op(b".")
        return self.out.getvalue()


def _aligned_info(name: str, offset: int, alignment: int = 64) -> zipfile.ZipInfo:
    """A stored (uncompressed) zip entry padded like torch's writer: data starts on `alignment` bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header = 30 + len(name.encode("utf-8"))
    pad = (-(offset + header + 4)) % alignment
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    info.create_system = 0
    return info


def save(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as a torch zip-format file (what `torch.save` writes), atomically, without torch.

    `obj` is any nesting of list, tuple, dict (str/int keys), int, float, str,
    bool, None and `np.ndarray` (float16/32/64, int8/16/32/64, uint8, bool);
    arrays become CPU tensors of the matching dtype. The result loads with
    `torch.load(path, weights_only=True)` and with `jlang.io.torchfile.load`.
    On several JAX processes only process 0 writes (`jlang.io.atomic.writes_results`).
    """
    writer = _PickleWriter()
    pickled = writer.finish(obj)
    if not writes_results():  # unwritable objects still fail on every process, above
        return
    target = output_path(path)
    archive = "".join(c if (c.isalnum() or c in "._-") else "_" for c in target.stem) or "archive"
    records: list[tuple[str, bytes]] = [("data.pkl", pickled), ("byteorder", b"little")]
    records += [(f"data/{i}", a.tobytes()) for i, a in enumerate(writer.storages)]
    records += [("version", b"3\n")]
    with atomic_file(target) as tmp:
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, data in records:
                zf.writestr(_aligned_info(f"{archive}/{name}", f.tell()), data)


def save_tensor_lists(path: str | os.PathLike, obj: Any) -> None:
    """Write a LAPE-style mask file: `List[List[LongTensor]]` (or a dict of int64 arrays / ints).

    This is the format of RUCAIBox `identify.py` (`torch.save(final_indice, ...)`)
    and of NJUNLP's `Neuron_Mask.save_file`: `obj[k][l]` is a 1-D int64 array of
    neuron indices. Integer arrays are cast to int64 (LongTensor); anything else
    is rejected so that the file is exactly what PyTorch users expect.
    """

    def as_long(a: Any, where: str) -> np.ndarray:
        arr = np.asarray(a)
        if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
            raise TypeError(f"{where}: expected an integer array, got dtype {arr.dtype}")
        return arr.astype(np.int64)

    if isinstance(obj, Mapping):
        out: Any = {}
        for k, v in obj.items():
            out[k] = v if (is_int(v) or isinstance(v, (str, float))) else as_long(v, f"[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        out = []
        for i, row in enumerate(obj):
            if not isinstance(row, (list, tuple)):
                raise TypeError(f"[{i}]: expected a list of 1-D index arrays, got {type(row).__name__}")
            out.append([as_long(t, f"[{i}][{j}]") for j, t in enumerate(row)])
    else:
        raise TypeError(f"expected List[List[array]] or a dict of arrays, got {type(obj).__name__}")
    save(path, out)
