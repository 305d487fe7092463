"""The decoder's hook points, attention-dimension edits and splices, checked against edited weights."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import jlang
from jlang import edits as E
from jlang.models.decoder import HOOK_POINTS, AttnEdits


@pytest.fixture(scope="module", params=["llama2", "qwen2", "gemma3"])
def tiny(request, tiny_dirs):
    """llama2 (GQA 6/2, no bias), qwen2 (q/k/v bias), gemma3 (q/k norm, sandwich norms, local layers)."""
    path, _ = tiny_dirs[request.param]
    return jlang.load_model(path, progress=False)


def _ids(model, batch=2, seq=9):
    return jnp.asarray(np.random.default_rng(0).integers(3, model.config.vocab_size, (batch, seq)))


def _attn_edit(model, **zeroed) -> jlang.Edits:
    c = model.config
    ones = AttnEdits.ones(c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim)
    fields = {}
    for name, (layer, dims) in zeroed.items():
        a = np.array(getattr(ones, name))
        a[layer, dims] = 0.0
        fields[name] = jnp.asarray(a)
    return dataclasses.replace(E.identity(model), attn=dataclasses.replace(ones, **fields))


def test_attention_ones_reproduce_unedited_logits(tiny):
    """x * 1.0 is exact, but the extra multiply lets XLA fuse Gemma 3's q/k-norm differently (1.8e-6 seen)."""
    ids = _ids(tiny)
    np.testing.assert_allclose(tiny.logits(ids, edits=_attn_edit(tiny)), tiny.logits(ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "kernel", "axis"), [("q", "q", 2), ("k", "k", 2), ("v", "v", 2), ("o", "o", 1)])
def test_zeroing_attention_dimensions_equals_zeroing_weights(tiny, name, kernel, axis):
    """A scale of 0 on q/k/v dims = zeroing those output columns of the [L, D, out] kernel (a bias stays,
    as when HF `q_proj.weight` rows are zeroed); on o dims = zeroing those input rows of the o kernel."""
    ids, c = _ids(tiny), tiny.config
    width = (c.num_heads if name in "qo" else c.num_kv_heads) * c.head_dim
    dims = np.random.default_rng(1).choice(width, size=max(2, width // 5), replace=False)
    w = np.array(tiny.params[f"layers.{kernel}"])
    index = [1, slice(None), slice(None)]
    index[axis] = dims
    w[tuple(index)] = 0.0
    zeroed = {f"layers.{kernel}": jnp.asarray(w)}
    ref, _ = tiny._jitted(dict(tiny.params, **zeroed), ids)
    out, _ = tiny._jitted(tiny.params, ids, edits=_attn_edit(tiny, **{name: (1, dims)}))
    plain, _ = tiny._jitted(tiny.params, ids)
    assert np.abs(np.asarray(out) - np.asarray(plain)).max() > 1e-4  # the edit matters
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=0)


def test_probe_sees_every_hook_point_with_its_shape(tiny):
    c, ids = tiny.config, _ids(tiny)
    b, t = ids.shape
    expect = {
        "attn.q": (b, t, c.num_heads, c.head_dim),
        "attn.k": (b, t, c.num_kv_heads, c.head_dim),
        "attn.v": (b, t, c.num_kv_heads, c.head_dim),
        "attn.allowed": (b, t, t),
        "attn.z": (b, t, c.num_heads * c.head_dim),
        "attn.out": (b, t, c.d_model),
        "mlp.in": (b, t, c.d_model),
        "mlp.up": (b, t, c.d_ff),
        "mlp.act": (b, t, c.d_ff),
        "mlp.hidden": (b, t, c.d_ff),
        "mlp.out": (b, t, c.d_model),
        "resid.post": (b, t, c.d_model),
    }
    assert set(expect) == set(HOOK_POINTS)
    _, probes = tiny.forward(ids, probe=lambda points, valid: {k: v for k, v in points.items()})
    for k, shape in expect.items():
        assert probes[k].shape == (c.num_layers, *shape), k
    p = {k: np.asarray(v) for k, v in probes.items()}
    np.testing.assert_allclose(p["mlp.hidden"], p["mlp.act"] * p["mlp.up"], rtol=1e-6, atol=1e-6)
    down = np.asarray(tiny.params["layers.down"])
    np.testing.assert_allclose(p["mlp.out"], np.einsum("lbtf,lfd->lbtd", p["mlp.hidden"], down), rtol=1e-4, atol=1e-5)
    if not c.o_bias and not c.sandwich_norms:
        o = np.asarray(tiny.params["layers.o"])
        np.testing.assert_allclose(p["attn.out"], np.einsum("lbtz,lzd->lbtd", p["attn.z"], o), rtol=1e-4, atol=1e-5)


def test_identity_splice_is_exact_and_a_replacing_splice_equals_zeroed_weights(tiny):
    ids = _ids(tiny)
    plain, _ = tiny.forward(ids)  # the same program shape (Model.forward runs on per-layer views on CPU)

    def keep(point, value, layer, args):
        return value

    same, _ = tiny.forward(ids, splice=keep)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(plain))

    def drop_mlp(point, value, layer, args):  # the MLP of layer `args` contributes nothing
        return jnp.where((point == "mlp.out") & (layer == args), jnp.zeros_like(value), value)

    down = np.array(tiny.params["layers.down"])
    down[2] = 0.0
    ref, _ = tiny._jitted(dict(tiny.params, **{"layers.down": jnp.asarray(down)}), ids)
    out, _ = tiny.forward(ids, splice=drop_mlp, splice_args=jnp.int32(2))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)
    before = tiny._jitted._cache_size()
    other, _ = tiny.forward(ids, splice=drop_mlp, splice_args=jnp.int32(0))  # another layer: data, no recompile
    assert tiny._jitted._cache_size() == before
    assert np.abs(np.asarray(other) - np.asarray(out)).max() > 1e-4
