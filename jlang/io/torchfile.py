"""Read and write `torch.save` files with NumPy alone: no torch, and no pickle code execution.

Why: the published artefacts of the language-neuron literature are `torch.save`
files -- the LAPE masks (`List[List[LongTensor]]`, RUCAIBox/Language-Specific-Neurons
`*.neuron.pth`), the activation statistics (`{"n", "over_zero"}` or
`{"total_tokens", "over_zero"}`, NJUNLP/Language-Neurons-Alignment), and so on.
jlang's core must read and write them without depending on torch, and a file
from the internet must never run code when it is opened.

Format (torch >= 1.6, "zip" serialization; see `torch/serialization.py`)::

    <archive>/data.pkl          pickle (protocol 2) of the object; every tensor is
                                REDUCE(torch._utils._rebuild_tensor_v2,
                                       (storage, offset, size, stride, requires_grad, hooks))
                                and every storage a persistent id
                                ('storage', torch.<T>Storage, key, location, numel)
    <archive>/data/<key>        raw little-endian bytes of storage <key>
    <archive>/byteorder         "little" | "big" (absent in old files: little)
    <archive>/version           "3\\n"

The legacy (torch < 1.6) format is a concatenation of pickles -- magic number,
protocol version, sys info, the object, the list of storage keys -- followed by
each storage as an int64 element count and its raw bytes.

Reading uses a `pickle.Unpickler` whose `find_class` returns only the handful of
harmless callables a tensor file needs (mapped to NumPy stand-ins) and raises
`TorchFileError` for anything else, before it is looked up, so a pickle that
reduces to `os.system` fails without running anything.

Writing emits the pickle opcodes directly (protocol 2, persistent ids, the
globals torch itself writes), so `torch.load(path, weights_only=True)` reads the
file and jlang never imports torch.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jlang.io.atomic import atomic_file, writes_results

__all__ = ["TorchFileError", "load", "save", "save_tensor_lists"]


class TorchFileError(ValueError):
    """A file is not a readable `torch.save` file, or holds something jlang refuses to load."""


class _Problem(Exception):
    """Internal: a reason, wrapped into `TorchFileError` with the file name by `load`."""


# ---------------------------------------------------------------------------------------------
# dtypes

# torch dtype name -> (numpy dtype of the stored bytes, little-endian). bfloat16 is stored as
# its 16 raw bits and widened to float32 (exact) after reading.
_DTYPES: dict[str, str] = {
    "float64": "<f8",
    "float32": "<f4",
    "float16": "<f2",
    "bfloat16": "<u2",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "uint16": "<u2",
    "uint32": "<u4",
    "uint64": "<u8",
    "bool": "?",
    "complex64": "<c8",
    "complex128": "<c16",
}
_DTYPE_ALIASES = {
    "double": "float64",
    "float": "float32",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}
# Legacy typed-storage class names (still what torch writes for the classic dtypes).
_STORAGE_CLASSES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
_UNTYPED = "UntypedStorage"

# numpy dtype -> (torch storage class, torch dtype name), for the writer.
_WRITE_STORAGE: dict[np.dtype, str] = {
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


# ---------------------------------------------------------------------------------------------
# Stand-ins produced while unpickling; turned into arrays once the storages are available.


@dataclass(frozen=True)
class _StorageType:
    dtype: str | None  # None: UntypedStorage (bytes; the tensor carries its dtype)


@dataclass(frozen=True)
class _DType:
    name: str


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: str | None
    numel: int  # elements of `dtype` (bytes when untyped)
    view_offset: int = 0  # legacy storage views: offset in elements into the root storage


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _tensor_ref(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise _Problem(f"a tensor's storage is {type(storage).__name__}, not a storage reference")
    if not _is_int(offset) or offset < 0:
        raise _Problem(f"bad storage offset {offset!r}")
    if not isinstance(size, (tuple, list)) or not all(_is_int(s) and s >= 0 for s in size):
        raise _Problem(f"bad tensor size {size!r}")
    if (
        not isinstance(stride, (tuple, list))
        or len(stride) != len(size)
        or not all(_is_int(s) and s >= 0 for s in stride)
    ):
        raise _Problem(f"bad tensor stride {stride!r} for size {size!r}")
    dtype = dtype or storage.dtype
    if dtype is None:
        raise _Problem("an untyped storage is used by a tensor without a dtype")
    return _TensorRef(storage, offset, tuple(size), tuple(stride), dtype)


def _rebuild_tensor(storage, storage_offset, size, stride):
    """Stand-in for `torch._utils._rebuild_tensor` (oldest zip files)."""
    return _tensor_ref(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Stand-in for `torch._utils._rebuild_tensor_v2` (typed storage; the usual case)."""
    return _tensor_ref(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    """Stand-in for `torch._utils._rebuild_tensor_v3` (untyped storage + explicit dtype, e.g. uint16)."""
    if not isinstance(dtype, _DType):
        raise _Problem(f"bad tensor dtype {dtype!r}")
    return _tensor_ref(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """Stand-in for `torch._utils._rebuild_parameter[_with_state]`: a Parameter is its data."""
    return data


def _codecs_encode(text, encoding="utf-8"):
    """Stand-in for `_codecs.encode`, which protocol-2 pickles use to spell `bytes` values."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise _Problem(f"_codecs.encode called with {type(text).__name__}, {encoding!r}")
    return text.encode(encoding)


def _torch_size(dims=()):
    return tuple(dims)


def _allowed_global(module: str, name: str) -> Any:
    """The only globals a tensor file may name. Everything else is refused."""
    if module == "torch._utils":
        table: dict[str, Callable] = {
            "_rebuild_tensor": _rebuild_tensor,
            "_rebuild_tensor_v2": _rebuild_tensor_v2,
            "_rebuild_tensor_v3": _rebuild_tensor_v3,
            "_rebuild_parameter": _rebuild_parameter,
            "_rebuild_parameter_with_state": _rebuild_parameter,
        }
        if name in table:
            return table[name]
    if module in ("torch", "torch.cuda") and name in _STORAGE_CLASSES:
        return _StorageType(_STORAGE_CLASSES[name])
    if module in ("torch", "torch.storage") and name == _UNTYPED:
        return _StorageType(None)
    if module == "torch" and (name in _DTYPES or name in _DTYPE_ALIASES):
        return _DType(_DTYPE_ALIASES.get(name, name))
    if module == "torch" and name == "Size":
        return _torch_size
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
        return {"set": set, "frozenset": frozenset}[name]
    if module == "_codecs" and name == "encode":
        return _codecs_encode
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_allowed_global` names and records every storage it meets."""

    def __init__(self, file, legacy: bool = False):
        super().__init__(file)
        self.legacy = legacy
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed_global(module, name)
        if found is None:
            raise _Problem(
                f"refusing to load the global '{module}.{name}': a tensor file may only reference "
                "torch tensor/storage rebuild functions, dtypes and collections.OrderedDict "
                "(jlang never executes code from a pickle)"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise _Problem(f"unexpected persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise _Problem(f"refusing persistent id of kind {kind!r} (only tensor storages are allowed)")
        if self.legacy:
            if len(pid) != 6:
                raise _Problem(f"bad legacy storage id {pid!r}")
            _, stype, key, _location, numel, view = pid
        else:
            if len(pid) != 5:
                raise _Problem(f"bad storage id {pid!r}")
            _, stype, key, _location, numel = pid
            view = None
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise _Problem(f"bad storage id {pid!r}")
        root = _StorageRef(key, stype.dtype, numel)
        known = self.storages.setdefault(key, root)
        if known != root:
            raise _Problem(f"storage {key!r} is declared twice with different types or sizes")
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1]) and _is_int(view[2])):
            raise _Problem(f"bad storage view {view!r}")
        _view_key, view_offset, view_size = view
        if view_offset < 0 or view_offset + view_size > numel:
            raise _Problem(f"storage view {view!r} exceeds storage {key!r} of {numel} elements")
        return _StorageRef(key, stype.dtype, view_size, view_offset)


# ---------------------------------------------------------------------------------------------
# Turning stand-ins into arrays


def _storage_array(raw: bytes, dtype: str | None, big_endian: bool) -> np.ndarray:
    """Raw storage bytes as a 1-D array of the stored code (uint8 when untyped)."""
    code = np.dtype(_DTYPES[dtype] if dtype is not None else "u1")
    if big_endian and code.itemsize > 1:
        code = code.newbyteorder(">")
    usable = len(raw) - len(raw) % code.itemsize
    return np.frombuffer(raw, dtype=code, count=usable // code.itemsize)


def _tensor_array(ref: _TensorRef, storage_bytes: Callable[[str], bytes], big_endian: bool) -> np.ndarray:
    """Materialise one tensor: respect storage offset, size, stride; copy into an owned array."""
    if ref.dtype not in _DTYPES:
        raise _Problem(f"tensor dtype {ref.dtype!r} is not supported (supported: {sorted(_DTYPES)})")
    raw = storage_bytes(ref.storage.key)
    code = np.dtype(_DTYPES[ref.dtype])
    if ref.storage.dtype is None:  # untyped: numel counts bytes
        if ref.storage.numel % code.itemsize:
            raise _Problem(
                f"untyped storage {ref.storage.key!r} of {ref.storage.numel} bytes is not a whole number of {ref.dtype}"
            )
        if len(raw) < ref.storage.numel:
            raise _Problem(
                f"storage data/{ref.storage.key} holds {len(raw)} bytes, the pickle expects {ref.storage.numel}"
            )
        flat = _storage_array(raw[: ref.storage.numel], ref.dtype, big_endian)
    else:
        if ref.storage.dtype != ref.dtype:
            raise _Problem(f"tensor dtype {ref.dtype} differs from its storage's {ref.storage.dtype}")
        need = (ref.storage.view_offset + ref.storage.numel) * code.itemsize
        if len(raw) < need:
            raise _Problem(f"storage data/{ref.storage.key} holds {len(raw)} bytes, the pickle expects at least {need}")
        flat = _storage_array(raw, ref.dtype, big_endian)
        flat = flat[ref.storage.view_offset : ref.storage.view_offset + ref.storage.numel]
    if 0 in ref.size:
        out = np.empty(ref.size, dtype=flat.dtype)
    else:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
        if last >= flat.size:
            raise _Problem(
                f"tensor (offset {ref.offset}, size {ref.size}, stride {ref.stride}) reads past the end of "
                f"storage {ref.storage.key!r} ({flat.size} elements)"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset :], shape=ref.size, strides=[s * flat.itemsize for s in ref.stride], writeable=False
        )
        out = np.array(view, copy=True)
    out = out.astype(out.dtype.newbyteorder("="), copy=False)
    if ref.dtype == "bfloat16":  # the 16 high bits of a float32: widening is exact
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _materialise(obj: Any, storage_bytes: Callable[[str], bytes], big_endian: bool) -> Any:
    """Replace every stand-in in a nested container by its NumPy array."""
    if isinstance(obj, _TensorRef):
        return _tensor_array(obj, storage_bytes, big_endian)
    if isinstance(obj, (_StorageRef, _StorageType, _DType)):
        raise _Problem(f"the file holds a bare {type(obj).__name__.strip('_')}, not a tensor")
    if isinstance(obj, dict):
        items = [(k, _materialise(v, storage_bytes, big_endian)) for k, v in obj.items()]
        return collections.OrderedDict(items) if isinstance(obj, collections.OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [_materialise(v, storage_bytes, big_endian) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v, storage_bytes, big_endian) for v in obj)
    if isinstance(obj, (set, frozenset)):
        return type(obj)(_materialise(v, storage_bytes, big_endian) for v in obj)
    return obj


# ---------------------------------------------------------------------------------------------
# Readers


def _zip_prefix(names: Sequence[str]) -> str:
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
    if len(pkl) != 1:
        raise _Problem(f"a torch zip file has exactly one '<archive>/data.pkl'; found {pkl or 'none'}")
    return pkl[0][: -len("data.pkl")]


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        prefix = _zip_prefix(names)
        big = False
        if prefix + "byteorder" in names:
            order = zf.read(prefix + "byteorder")
            if order not in (b"little", b"big"):
                raise _Problem(f"unknown byteorder record {order!r}")
            big = order == b"big"
        unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(prefix + "data.pkl")))
        obj = unpickler.load()
        cache: dict[str, bytes] = {}

        def storage_bytes(key: str) -> bytes:
            if key not in cache:
                name = f"{prefix}data/{key}"
                if name not in names:
                    raise _Problem(f"missing storage record {name!r}")
                cache[key] = zf.read(name)
            return cache[key]

        return _materialise(obj, storage_bytes, big)


def _load_legacy(path: Path) -> Any:
    with open(path, "rb") as f:
        magic = _RestrictedUnpickler(f).load()
        if magic != _LEGACY_MAGIC:
            raise _Problem("not a torch.save file (neither a zip archive nor the legacy format's magic number)")
        protocol = _RestrictedUnpickler(f).load()
        if protocol != _LEGACY_PROTOCOL:
            raise _Problem(f"unsupported legacy protocol version {protocol!r}")
        _RestrictedUnpickler(f).load()  # sys_info; storages below are little-endian regardless
        unpickler = _RestrictedUnpickler(f, legacy=True)
        obj = unpickler.load()
        keys = _RestrictedUnpickler(f).load()
        if not isinstance(keys, list) or set(keys) != set(unpickler.storages):
            raise _Problem("the storage key list does not match the storages the object uses")
        data: dict[str, bytes] = {}
        for key in keys:
            ref = unpickler.storages[key]
            head = f.read(8)
            if len(head) != 8:
                raise _Problem(f"truncated file: storage {key!r} missing")
            (numel,) = struct.unpack("<q", head)  # written little-endian by torch
            if numel != ref.numel:
                raise _Problem(f"storage {key!r} holds {numel} elements, the pickle expects {ref.numel}")
            itemsize = 1 if ref.dtype is None else np.dtype(_DTYPES[ref.dtype]).itemsize  # untyped: bytes
            nbytes = numel * itemsize
            data[key] = f.read(nbytes)
            if len(data[key]) != nbytes:
                raise _Problem(f"truncated file: storage {key!r} has {len(data[key])} of {nbytes} bytes")
        # Legacy raw storage bytes are written little-endian whatever the machine (THPStorage_writeFileRaw).
        return _materialise(obj, data.__getitem__, False)


def load(path: str | os.PathLike) -> Any:
    """Load a `torch.save` file as plain Python objects with tensors as `np.ndarray`.

    Containers (dict, OrderedDict, list, tuple, set) and scalars (int, float, str,
    bool, None, bytes) come back as themselves; tensors and `nn.Parameter`s as
    owned, native-endian NumPy arrays of the same shape (bfloat16 widened to
    float32). Works for the zip format (torch >= 1.6) and the legacy format.

    Raises:
        FileNotFoundError: the path does not exist.
        TorchFileError: the file is not a torch file, is truncated, or references
            any global besides tensor/storage rebuilding (e.g. `os.system`); the
            message names the file and the refused global. Nothing in the file is
            executed.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    try:
        if zipfile.is_zipfile(p):
            return _load_zip(p)
        return _load_legacy(p)
    except _Problem as e:
        raise TorchFileError(f"{p}: {e}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        struct.error,
        UnicodeDecodeError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
    ) as e:
        if isinstance(e, TorchFileError):
            raise
        raise TorchFileError(f"{p}: not a readable torch.save file ({type(e).__name__}: {e})") from None


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
        if arr.dtype.newbyteorder("=") not in _WRITE_STORAGE:
            raise TypeError(
                f"cannot write a {arr.dtype} array as a torch tensor (supported: {sorted(str(d) for d in _WRITE_STORAGE)})"
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
        self.global_("torch", _WRITE_STORAGE[np.dtype(arr.dtype.newbyteorder("="))])
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
    target = Path(path)
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
            out[k] = v if (_is_int(v) or isinstance(v, (str, float))) else as_long(v, f"[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        out = []
        for i, row in enumerate(obj):
            if not isinstance(row, (list, tuple)):
                raise TypeError(f"[{i}]: expected a list of 1-D index arrays, got {type(row).__name__}")
            out.append([as_long(t, f"[{i}][{j}]") for j, t in enumerate(row)])
    else:
        raise TypeError(f"expected List[List[array]] or a dict of arrays, got {type(obj).__name__}")
    save(path, out)
