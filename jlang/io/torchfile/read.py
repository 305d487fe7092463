"""Reading `torch.save` files (zip and legacy formats) with a restricted unpickler: no code runs on load.

See `jlang.io.torchfile` for the format.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jlang.io.torchfile.formats import (
    DTYPE_ALIASES,
    DTYPES,
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    STORAGE_CLASSES,
    UNTYPED,
    TorchFileError,
    is_int,
)


class _Problem(Exception):
    """Internal: a reason, wrapped into `TorchFileError` with the file name by `load`."""


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


def _tensor_ref(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise _Problem(f"a tensor's storage is {type(storage).__name__}, not a storage reference")
    if not is_int(offset) or offset < 0:
        raise _Problem(f"bad storage offset {offset!r}")
    if not isinstance(size, (tuple, list)) or not all(is_int(s) and s >= 0 for s in size):
        raise _Problem(f"bad tensor size {size!r}")
    if (
        not isinstance(stride, (tuple, list))
        or len(stride) != len(size)
        or not all(is_int(s) and s >= 0 for s in stride)
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
    if module in ("torch", "torch.cuda") and name in STORAGE_CLASSES:
        return _StorageType(STORAGE_CLASSES[name])
    if module in ("torch", "torch.storage") and name == UNTYPED:
        return _StorageType(None)
    if module == "torch" and (name in DTYPES or name in DTYPE_ALIASES):
        return _DType(DTYPE_ALIASES.get(name, name))
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
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not is_int(numel) or numel < 0:
            raise _Problem(f"bad storage id {pid!r}")
        root = _StorageRef(key, stype.dtype, numel)
        known = self.storages.setdefault(key, root)
        if known != root:
            raise _Problem(f"storage {key!r} is declared twice with different types or sizes")
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and is_int(view[1]) and is_int(view[2])):
            raise _Problem(f"bad storage view {view!r}")
        _view_key, view_offset, view_size = view
        if view_offset < 0 or view_offset + view_size > numel:
            raise _Problem(f"storage view {view!r} exceeds storage {key!r} of {numel} elements")
        return _StorageRef(key, stype.dtype, view_size, view_offset)


# ---------------------------------------------------------------------------------------------
# Turning stand-ins into arrays


def _storage_array(raw: bytes, dtype: str | None, big_endian: bool) -> np.ndarray:
    """Raw storage bytes as a 1-D array of the stored code (uint8 when untyped)."""
    code = np.dtype(DTYPES[dtype] if dtype is not None else "u1")
    if big_endian and code.itemsize > 1:
        code = code.newbyteorder(">")
    usable = len(raw) - len(raw) % code.itemsize
    return np.frombuffer(raw, dtype=code, count=usable // code.itemsize)


def _tensor_array(ref: _TensorRef, storage_bytes: Callable[[str], bytes], big_endian: bool) -> np.ndarray:
    """Materialise one tensor: respect storage offset, size, stride; copy into an owned array."""
    if ref.dtype not in DTYPES:
        raise _Problem(f"tensor dtype {ref.dtype!r} is not supported (supported: {sorted(DTYPES)})")
    raw = storage_bytes(ref.storage.key)
    code = np.dtype(DTYPES[ref.dtype])
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
        if magic != LEGACY_MAGIC:
            raise _Problem("not a torch.save file (neither a zip archive nor the legacy format's magic number)")
        protocol = _RestrictedUnpickler(f).load()
        if protocol != LEGACY_PROTOCOL:
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
            itemsize = 1 if ref.dtype is None else np.dtype(DTYPES[ref.dtype]).itemsize  # untyped: bytes
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
