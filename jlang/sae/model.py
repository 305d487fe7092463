"""Sparse autoencoders as pure functions over a params pytree: TopK (Gao et al. 2024) and ReLU + L1.

An SAE reads the activation `x [..., d_in]` of one hook point of one layer and
writes it back as a sparse, non-negative combination of `num_features` unit
directions (the rows of `W_dec`)::

    pre   = (x - b_dec) @ W_enc + b_enc                     [..., F]
    a     = TopK_k(ReLU(pre))   (kind "topk": the k largest, the rest 0)
          | ReLU(pre)           (kind "relu": trained with an L1 penalty)
    x_hat = a @ W_dec + b_dec                               [..., d_in]

This is the SAE of SAE-LAPE (methods.md §7.1: EleutherAI `sparsify` TopK SAEs on
the MLP output, `k = 32`); ReLU + L1 is the earlier recipe (Bricken et al. 2023,
with the L1 term weighted by the decoder norms as in Anthropic's April 2024 update).

Params are a dict of arrays (`W_enc [d_in, F]`, `b_enc [F]`, `W_dec [F, d_in]`,
`b_dec [d_in]`), so they pass through `jit`, optax, orbax and the decoder's
`splice_args` as data. Decoder rows are kept at unit norm (`normalize_decoder`,
with the gradient component along each row removed before the update), so a
feature's activation is its length along its direction, which makes the
steering rule `h += m * maxact_f * W_dec[f]` (methods.md §7.4) meaningful.

Training normalises activations by one scalar (`scale`, so that
`E||x / scale||^2 = d_in`); `fold_scale` turns an SAE trained on `x / scale`
into the same SAE on `x` (biases times `scale`, directions unchanged), so every
saved SAE reads raw activations and its feature values are in the model's units.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jlang.io.npz import read_npz, write_npz
from jlang.models.decoder import SPLICE_POINTS

Array = jax.Array
Params = dict[str, Array]

KINDS = ("topk", "relu")
PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
_FORMAT = "jlang.SAE/1"


class SAEError(ValueError):
    """An SAE config, parameter set or file is malformed; the message says what and how to fix it."""


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """What an SAE is: its sizes, its sparsity rule and where in the model it reads.

    Attributes:
      d_in: width of the activation it reads (d_model for `mlp.out` / `resid.post`).
      num_features: dictionary size F.
      kind: "topk" (keep the k largest ReLU pre-activations) or "relu" (ReLU, L1-trained).
      k: active features per token for "topk".
      layer: the layer whose hook point it reads.
      hook_point: "mlp.out" (default, SAE-LAPE's `layers.N.mlp`) or "resid.post".
    """

    d_in: int
    num_features: int
    kind: Literal["topk", "relu"] = "topk"
    k: int = 32
    layer: int = 0
    hook_point: str = "mlp.out"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SAEError(f"SAE kind must be one of {KINDS}, got {self.kind!r}")
        if self.d_in < 1 or self.num_features < 1:
            raise SAEError(f"d_in and num_features must be positive, got {self.d_in} and {self.num_features}")
        if self.kind == "topk" and not 1 <= self.k <= self.num_features:
            raise SAEError(f"k must be in [1, num_features={self.num_features}], got {self.k}")
        if self.hook_point not in SPLICE_POINTS:
            raise SAEError(
                f"hook_point must be one of {SPLICE_POINTS} (the points the decoder can splice an SAE into), "
                f"got {self.hook_point!r}"
            )
        if self.layer < 0:
            raise SAEError(f"layer must be >= 0, got {self.layer}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- params


def init_params(key: Array, cfg: SAEConfig, *, b_dec: Array | None = None) -> Params:
    """Random unit decoder rows, the encoder tied to them (`W_enc = W_dec.T`), zero encoder bias.

    Tied initialisation (Gao et al. 2024 §2.4; Conerly et al. 2024) starts every
    feature as a matched filter of its own direction, so few features start dead.
    `b_dec` defaults to 0; trainers set it to the data mean.
    """
    w = jax.random.normal(key, (cfg.num_features, cfg.d_in), jnp.float32)
    w = w / jnp.linalg.norm(w, axis=-1, keepdims=True)
    return {
        "W_enc": w.T,
        "b_enc": jnp.zeros((cfg.num_features,), jnp.float32),
        "W_dec": w,
        "b_dec": jnp.zeros((cfg.d_in,), jnp.float32) if b_dec is None else jnp.asarray(b_dec, jnp.float32),
    }


def check_params(params: Mapping[str, Any], cfg: SAEConfig) -> None:
    """Raise SAEError naming every parameter that is missing or has the wrong shape."""
    expect = {
        "W_enc": (cfg.d_in, cfg.num_features),
        "b_enc": (cfg.num_features,),
        "W_dec": (cfg.num_features, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    missing = [n for n in expect if n not in params]
    wrong = [
        f"{n} {tuple(np.shape(params[n]))} (expected {s})"
        for n, s in expect.items()
        if n in params and tuple(np.shape(params[n])) != s
    ]
    if missing or wrong:
        raise SAEError(f"SAE params do not fit {cfg}: missing {missing}, wrong shapes {wrong}")


# ----------------------------------------------------------------------------- the maps


def pre_activations(params: Params, x: Array) -> Array:
    """`(x - b_dec) @ W_enc + b_enc`: float32 `[..., F]` for `x [..., d_in]`."""
    x = x.astype(jnp.float32)
    return (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]


def topk_sparse(pre: Array, k: int) -> tuple[Array, Array]:
    """The k largest pre-activations after ReLU: (values `[..., k]` >= 0, indices int32 `[..., k]`).

    Exactly k indices per token (ties go to the lower index, `jax.lax.top_k`); a
    value is 0 when fewer than k pre-activations are positive (as `sparsify`).
    """
    values, indices = jax.lax.top_k(pre, k)
    return jax.nn.relu(values), indices.astype(jnp.int32)


def scatter_dense(values: Array, indices: Array, num_features: int) -> Array:
    """Sparse `(values, indices) [..., k]` -> dense `[..., F]` with zeros elsewhere."""
    lead, k = values.shape[:-1], values.shape[-1]
    flat_v, flat_i = values.reshape(-1, k), indices.reshape(-1, k)
    rows = jnp.arange(flat_v.shape[0])[:, None]
    dense = jnp.zeros((flat_v.shape[0], num_features), values.dtype).at[rows, flat_i].set(flat_v)
    return dense.reshape(*lead, num_features)


def encode(params: Params, x: Array, cfg: SAEConfig) -> Array:
    """Feature activations, dense float32 `[..., F]` (>= 0; at most k non-zero per token for "topk")."""
    pre = pre_activations(params, x)
    if cfg.kind == "relu":
        return jax.nn.relu(pre)
    values, indices = topk_sparse(pre, cfg.k)
    return scatter_dense(values, indices, cfg.num_features)


def decode(params: Params, acts: Array) -> Array:
    """`acts @ W_dec + b_dec`: float32 `[..., d_in]` for dense acts `[..., F]`."""
    return acts @ params["W_dec"] + params["b_dec"]


def decode_sparse(params: Params, values: Array, indices: Array) -> Array:
    """`sum_j values_j W_dec[indices_j] + b_dec`: the TopK decode in k rows instead of F."""
    rows = jnp.take(params["W_dec"], indices, axis=0)  # [..., k, d_in]
    return jnp.einsum("...k,...kd->...d", values, rows) + params["b_dec"]


def reconstruct(params: Params, x: Array, cfg: SAEConfig) -> Array:
    """The SAE's output `x_hat [..., d_in]` for `x [..., d_in]` (float32)."""
    return reconstruct_with(params, x, cfg.kind, cfg.k)


def reconstruct_with(params: Params, x: Array, kind: str, k: int) -> Array:
    """`reconstruct` given only what it depends on statically (the kind and k), for splices."""
    pre = pre_activations(params, x)
    if kind == "relu":
        return decode(params, jax.nn.relu(pre))
    return decode_sparse(params, *topk_sparse(pre, k))


# ----------------------------------------------------------------------------- constraints


def normalize_decoder(params: Params, eps: float = 1e-8) -> Params:
    """Decoder rows rescaled to unit norm (the constraint every update restores)."""
    w = params["W_dec"]
    return {**params, "W_dec": w / (jnp.linalg.norm(w, axis=-1, keepdims=True) + eps)}


def remove_parallel_grad(grads: Params, params: Params) -> Params:
    """Remove from `dL/dW_dec[f]` its component along `W_dec[f]` (which renormalising would undo anyway).

    With unit rows, `g - (g . w) w` is the gradient's projection on the tangent
    space of the sphere (`sparsify`'s `remove_gradient_parallel_to_decoder_directions`).
    """
    w, g = params["W_dec"], grads["W_dec"]
    return {**grads, "W_dec": g - jnp.sum(g * w, axis=-1, keepdims=True) * w}


def fold_scale(params: Params, scale: Array | float) -> Params:
    """The SAE of `x` from the SAE of `x / scale`: biases times `scale`, weights unchanged.

    For `s > 0`: `pre(x) = s * pre_n(x / s)` when `b_dec = s b_dec_n`, `b_enc = s b_enc_n`;
    TopK and ReLU commute with positive scaling, so features are `s` times the
    normalised ones and `x_hat(x) = s * x_hat_n(x / s)`.
    """
    s = jnp.asarray(scale, jnp.float32)
    return {**params, "b_enc": params["b_enc"] * s, "b_dec": params["b_dec"] * s}


# ----------------------------------------------------------------------------- losses


def _weighted_mean(values: Array, weight: Array) -> Array:
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def explained_variance(x: Array, x_hat: Array, weight: Array) -> Array:
    """`1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2` over tokens with weight 1 (`x [N, d]`, weight `[N]`)."""
    w = weight[:, None]
    n = jnp.maximum(jnp.sum(weight), 1.0)
    mean = jnp.sum(x * w, axis=0) / n
    resid = jnp.sum(jnp.square(x - x_hat) * w)
    total = jnp.sum(jnp.square(x - mean) * w)
    return 1.0 - resid / jnp.maximum(total, 1e-12)


def loss_and_metrics(
    params: Params,
    x: Array,
    weight: Array,
    dead: Array,
    cfg: SAEConfig,
    *,
    l1_coeff: float = 0.0,
    auxk_coeff: float = 0.0,
    auxk_k: int = 0,
) -> tuple[Array, dict[str, Array]]:
    """Training loss of one minibatch, and its metrics.

    Args:
      x: float32 `[N, d_in]` activations (normalised); weight `[N]` 1 for tokens that count, 0 for padding.
      dead: bool `[F]`, features that did not fire recently (TopK's AuxK term reconstructs the
        residual from the `auxk_k` largest of them, Gao et al. 2024 §A.2, so they get gradient).
      l1_coeff: "relu" only, weight of `sum_f a_f ||W_dec[f]||`.
    Returns:
      (loss, {"loss", "mse", "ev", "l0", "aux", "fired" bool [F]}); mse is the
      per-token squared error summed over `d_in`, averaged over tokens.
    """
    pre = pre_activations(params, x)
    w = weight.astype(jnp.float32)
    if cfg.kind == "relu":
        acts = jax.nn.relu(pre)
        x_hat = decode(params, acts)
        norms = jnp.linalg.norm(params["W_dec"], axis=-1)
        aux = _weighted_mean(acts @ norms, w)
        active = acts > 0
        fired = jnp.any(active & (w[:, None] > 0), axis=0)
        l0 = _weighted_mean(jnp.sum(active, axis=-1).astype(jnp.float32), w)
        extra = l1_coeff * aux
    else:
        values, indices = topk_sparse(pre, cfg.k)
        x_hat = decode_sparse(params, values, indices)
        hit = (values > 0) & (w[:, None] > 0)
        fired = jnp.zeros(cfg.num_features, jnp.int32).at[indices.ravel()].max(hit.ravel().astype(jnp.int32)) > 0
        l0 = _weighted_mean(jnp.sum(values > 0, axis=-1).astype(jnp.float32), w)
        aux = jnp.zeros((), jnp.float32)
        if auxk_coeff > 0 and auxk_k > 0:
            aux = _auxk(params, x, x_hat, pre, w, dead, auxk_k)
        extra = auxk_coeff * aux
    mse = _weighted_mean(jnp.sum(jnp.square(x_hat - x), axis=-1), w)
    loss = mse + extra
    return loss, {"loss": loss, "mse": mse, "ev": explained_variance(x, x_hat, w), "l0": l0, "aux": aux, "fired": fired}


def _auxk(params: Params, x: Array, x_hat: Array, pre: Array, w: Array, dead: Array, k_aux: int) -> Array:
    """AuxK: how well the `k_aux` largest dead pre-activations reconstruct the residual, relative to its variance.

    The residual is a constant (no gradient flows into the live features through
    it); 0 when no feature is dead.
    """
    resid = jax.lax.stop_gradient(x - x_hat)
    k_aux = min(k_aux, pre.shape[-1])
    values, indices = jax.lax.top_k(jnp.where(dead, pre, -jnp.inf), k_aux)
    values = jnp.where(jnp.isfinite(values), jax.nn.relu(values), 0.0)
    resid_hat = jnp.einsum("nk,nkd->nd", values, jnp.take(params["W_dec"], indices, axis=0))
    err = jnp.sum(jnp.sum(jnp.square(resid_hat - resid), axis=-1) * w)
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(resid * w[:, None], axis=0) / n
    var = jnp.sum(jnp.sum(jnp.square(resid - mean), axis=-1) * w)
    return jnp.where(jnp.any(dead), err / jnp.maximum(var, 1e-12), 0.0)


# ----------------------------------------------------------------------------- a trained SAE


def read_sae_file(path: str | os.PathLike, format_prefix: str) -> tuple[dict[str, np.ndarray], list[str], dict]:
    """(arrays, languages, meta) of a jlang `.npz` of the SAE family (`jlang.io.npz.read_npz`); errors as `SAEError`."""
    try:
        return read_npz(path, format_prefix=format_prefix)
    except ValueError as e:
        raise SAEError(str(e)) from None


@dataclasses.dataclass
class SAE:
    """A trained SAE reading raw activations: `config`, `params` (NumPy or JAX arrays), `meta`.

    Saved as `.npz` (NumPy alone opens it): the four arrays, `config` and `meta` as JSON.
    """

    config: SAEConfig
    params: dict[str, Any]
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_params(self.params, self.config)

    @property
    def jax_params(self) -> Params:
        return {k: jnp.asarray(self.params[k], jnp.float32) for k in PARAM_NAMES}

    def encode(self, x: Any) -> np.ndarray:
        return np.asarray(encode(self.jax_params, jnp.asarray(x), self.config))

    def reconstruct(self, x: Any) -> np.ndarray:
        return np.asarray(reconstruct(self.jax_params, jnp.asarray(x), self.config))

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path` (`.npz`) atomically."""
        p = Path(path)
        arrays = {k: np.asarray(self.params[k], np.float32) for k in PARAM_NAMES}
        write_npz(p, format=_FORMAT, languages=[], arrays=arrays, meta={"config": self.config.to_dict(), **self.meta})
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> SAE:
        arrays, _, meta = read_sae_file(path, "jlang.SAE/")
        if "config" not in meta:
            raise SAEError(f"{path}: no SAE config in its metadata")
        try:
            cfg = SAEConfig(**meta.pop("config"))
        except TypeError as e:
            raise SAEError(f"{path}: malformed SAE config ({e})") from None
        return cls(cfg, arrays, meta)

    def __repr__(self) -> str:
        c = self.config
        extra = f", k={c.k}" if c.kind == "topk" else ""
        return f"SAE({c.kind}{extra}, {c.d_in} -> {c.num_features}, layer {c.layer} {c.hook_point})"
