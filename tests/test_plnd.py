"""PLND (Zhao et al. 2024): scores against slow per-unit recomputations, selection on hand-made scores,
the GQA index fix against hand-zeroed Hugging Face weights, mesh vs one device, files, CLI, bad input."""

from __future__ import annotations

import copy
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlang
from jlang import edits as E
from jlang.methods import plnd as P


@pytest.fixture(scope="module")
def llama(tiny_dirs):
    """Llama, 3 layers, 6 heads / 2 kv heads x head_dim 8 (GQA group 3), 83 neurons."""
    return jlang.load_model(tiny_dirs["llama2"][0], progress=False)


@pytest.fixture(scope="module")
def gemma2(tiny_dirs):
    """Gemma 2: attention soft-cap, query_pre_attn_scalar scaling, sliding-window layers, sandwich norms."""
    return jlang.load_model(tiny_dirs["gemma2"][0], progress=False)


def _batch(model, b=3, t=9):
    """Random ids; row 1 is padded after 6 tokens (padding must not count)."""
    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, (b, t))
    valid = np.ones((b, t), bool)
    valid[1, 6:] = False
    return ids, valid


def _all_points(points, valid):
    return dict(points)


def _points(model, ids, valid):
    """Every hook point of every layer, as float64 host arrays `[L, ...]`."""
    _, p = model.forward(jnp.asarray(ids, jnp.int32), valid=jnp.asarray(valid), probe=_all_points)
    return {k: np.asarray(v, np.float64) if v.dtype != bool else np.asarray(v) for k, v in p.items()}


# ----------------------------------------------------------------------------- scores


def test_ffn_paper_score_equals_the_output_change_of_zeroing_each_neuron(llama):
    """For every (layer, neuron): Σ_t ‖mlp.out(neuron zeroed) − mlp.out‖₂ over real tokens, by a slow loop of Edits."""
    ids, valid = _batch(llama)
    L, F = llama.num_layers, llama.num_neurons
    fast = P.document_scores(llama, ids, valid, mode="paper")["ffn"]  # [b, L, F]

    def out_probe(points, v):
        return points["mlp.out"]

    dev_ids, dev_valid = jnp.asarray(ids, jnp.int32), jnp.asarray(valid)
    _, base = llama.forward(dev_ids, valid=dev_valid, probe=out_probe)
    base = np.asarray(base, np.float64)
    slow = np.zeros_like(fast, dtype=np.float64)
    for layer in range(L):
        for j in range(F):
            mask = np.zeros((L, F), bool)
            mask[layer, j] = True
            _, out = llama.forward(dev_ids, valid=dev_valid, probe=out_probe, edits=E.deactivate(mask))
            change = np.linalg.norm(np.asarray(out[layer], np.float64) - base[layer], axis=-1)  # [b, t]
            slow[:, layer, j] = np.where(valid, change, 0.0).sum(axis=1)
    assert slow.max() > 1e-2
    np.testing.assert_allclose(fast, slow, rtol=2e-3, atol=1e-6)


def test_ffn_code_score_is_sum_of_abs_up(llama):
    """Σ_t |W_up x_t| with x the MLP's normed input (`post_attention_layernorm(h)`), W_up the up kernel."""
    ids, valid = _batch(llama)
    x = _points(llama, ids, valid)["mlp.in"]  # [L, b, t, d_model]
    up = np.einsum("lbtd,ldf->lbtf", x, np.asarray(llama.params["layers.up"], np.float64))
    ref = np.where(valid[None, :, :, None], np.abs(up), 0).sum(axis=2).transpose(1, 0, 2)
    np.testing.assert_allclose(
        P.document_scores(llama, ids, valid, mode="code")["ffn"],
        ref,
        rtol=1e-4,
        atol=1e-5,
    )


def _qk_reference(q, k, allowed, valid, cfg, *, zero_dims: bool):
    """Per dimension d, by a loop: softmax of the logits with that dimension changed, minus the original,
    squared, summed.

    zero_dims=False: the released `S − q[d] k[d]^T` (unscaled); True: `S` recomputed with q[d] = k[d] = 0.
    q `[b, t, H, D]`, k `[b, t, G, D]` (float64).
    """
    b, _t, H, D = q.shape
    kr = np.repeat(k, H // k.shape[2], axis=2)  # repeat_kv: head h reads kv head h // group

    def logits(qq, kk):
        s = np.einsum("bthd,bshd->bhts", qq, kk) * cfg.attn_scale
        if cfg.attn_softcap is not None:
            s = np.tanh(s / cfg.attn_softcap) * cfg.attn_softcap
        return s

    def softmax(s):
        s = np.where(allowed[:, None], s, -np.inf)
        e = np.exp(s - s.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    s = logits(q, kr)
    p = softmax(s)
    out = np.zeros((b, H * D))
    for h in range(H):
        for j in range(D):
            if zero_dims:
                q2, k2 = q.copy(), kr.copy()
                q2[:, :, h, j] = 0.0
                k2[:, :, h, j] = 0.0
                s_d = logits(q2, k2)
            else:
                s_d = s.copy()
                s_d[:, h] -= np.einsum("bt,bs->bts", q[:, :, h, j], kr[:, :, h, j])
            diff = softmax(s_d)[:, h] - p[:, h]  # [b, t, s]
            out[:, h * D + j] = np.where(valid[:, :, None], diff**2, 0).sum(axis=(1, 2))
    return out


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_qk_score_equals_per_dimension_recomputation(name, request):
    model = request.getfixturevalue(name)
    ids, valid = _batch(model)
    pts = _points(model, ids, valid)
    fast = P.document_scores(model, ids, valid)["qk"]  # [b, L, H*D]
    for layer in range(model.num_layers):
        ref = _qk_reference(
            pts["attn.q"][layer], pts["attn.k"][layer], pts["attn.allowed"][layer], valid, model.config, zero_dims=False
        )
        assert ref.max() > 1e-4
        np.testing.assert_allclose(fast[:, layer], ref, rtol=2e-3, atol=1e-7, err_msg=f"layer {layer}")


def test_scaled_delta_equals_zeroing_the_dimension_of_q_and_k(llama):
    """`delta_scaled=True` removes dimension d (no soft-cap on Llama); a small block size exercises the chunking."""
    ids, valid = _batch(llama)
    pts = _points(llama, ids, valid)
    c = llama.config
    score = jax.jit(
        functools.partial(
            P.qk_score,
            attn_scale=c.attn_scale,
            delta_scaled=True,
            block_elements=2 * 3 * 6 * 81,
        )
    )
    for layer in range(c.num_layers):
        q, k, allowed = (
            pts["attn.q"][layer],
            pts["attn.k"][layer],
            pts["attn.allowed"][layer],
        )
        fast = score(
            jnp.asarray(q, jnp.float32),
            jnp.asarray(k, jnp.float32),
            jnp.asarray(allowed),
            jnp.asarray(valid),
        )
        ref = _qk_reference(q, k, allowed, valid, c, zero_dims=True)
        np.testing.assert_allclose(np.asarray(fast), ref, rtol=2e-3, atol=1e-8)
    assert P.dim_chunk(3, 6, 9, 8, 2 * 3 * 6 * 81) == 2


def test_vo_score_is_sum_of_abs_z_and_padding_does_not_count(llama):
    ids, valid = _batch(llama)
    z = _points(llama, ids, valid)["attn.z"]  # [L, b, t, H*D]
    scores = P.document_scores(llama, ids, valid)
    ref = np.where(valid[None, :, :, None], np.abs(z), 0).sum(axis=2).transpose(1, 0, 2)
    np.testing.assert_allclose(scores["vo"], ref, rtol=1e-5, atol=1e-6)
    alone = P.document_scores(llama, ids[1:2, :6])  # the padded row on its own, without padding
    for part in P.PARTS:
        np.testing.assert_allclose(scores[part][1], alone[part][0], rtol=1e-4, atol=1e-6, err_msg=part)


# ----------------------------------------------------------------------------- selection on hand-made scores


def test_topk_intersection_and_shared_removal_on_hand_made_scores():
    # ties go to the lower index, like lax.top_k
    member = np.asarray(P.topk_membership(jnp.asarray([[3.0, 1.0, 3.0, 2.0], [1.0, 1.0, 1.0, 1.0]]), 2))
    np.testing.assert_array_equal(member, [[True, False, True, False], [True, True, False, False]])

    # 5 documents (one layer, 5 units, top-2): language a = docs 0, 1; b = docs 2, 3; c = doc 4; a padding row
    scores = jnp.asarray(
        [
            [[9, 8, 0, 0, 1]],  # a: {0, 1}
            [[9, 0, 0, 0, 8]],  # a: {0, 4}     -> activated(a) = {0}
            [[0, 9, 8, 0, 0]],  # b: {1, 2}
            [[7, 9, 8, 0, 0]],  # b: {1, 2}     -> activated(b) = {1, 2}
            [[0, 9, 0, 0, 8]],  # c: {1, 4}     -> activated(c) = {1, 4}
            [[9, 9, 9, 9, 9]],  # padding row: never counts
        ],
        jnp.float32,
    )
    lang = jnp.asarray([0, 0, 1, 1, 2, -1])
    is_doc = jnp.asarray([True] * 5 + [False])
    counts = np.asarray(P.language_counts(P.topk_membership(scores, 2), is_doc, lang, 3))
    np.testing.assert_array_equal(counts[:, 0], [[2, 1, 0, 0, 1], [0, 2, 2, 0, 0], [0, 1, 0, 0, 1]])
    docs = np.array([2, 2, 1])
    zeros = np.zeros((3, 1, 2), np.int64)
    r = P.PLNDResult(["a", "b", "c"], docs, {"ffn": counts, "qk": zeros, "vo": zeros})
    sets = lambda m: [set(np.flatnonzero(m[k, 0]).tolist()) for k in range(3)]
    assert sets(r.activated("ffn")) == [{0}, {1, 2}, {1, 4}]
    assert r.shared("ffn").sum() == 0 and sets(r.specific("ffn")) == [
        {0},
        {1, 2},
        {1, 4},
    ]
    # unit 1 is activated by b and c: removed when shared by the languages b and c, kept for a
    r2 = r.with_shared_languages(["b", "c"])
    assert sets(r2.specific("ffn")) == [{0}, {2}, {4}]
    # a unit activated by every language is removed from all (spec_L = act_L − ⋂_k act_k)
    counts3 = counts.copy()
    counts3[:, 0, 3] = docs
    r3 = P.PLNDResult(["a", "b", "c"], docs, {"ffn": counts3, "qk": zeros, "vo": zeros})
    assert sets(r3.activated("ffn")) == [{0, 3}, {1, 2, 3}, {1, 3, 4}]
    assert sets(r3.specific("ffn")) == [{0}, {1, 2}, {1, 4}]
    assert r3.ffn.masks.shape == (3, 1, 5) and r3.summary()["shared"]["ffn"] == 1


# ----------------------------------------------------------------------------- GQA mapping and deactivation


def test_documents_are_sampled_as_released_and_packed_windows_are_full():
    import random

    from tiny_models import tiny_tokenizer

    from jlang.data.pipeline import make_batches, tokenize_corpus

    rng = np.random.default_rng(6)
    lines = {"aa": _docs(rng, 30, 4, 60), "bb": _docs(rng, 12, 60, 131)}
    tok = tokenize_corpus(lines, tiny_tokenizer(), progress=False)
    sub = P.sample_documents(tok, 5)
    random.seed(112)  # neuron_detection.py: random.seed(112); random.sample(lines, N)
    expect = random.sample(lines["aa"], 5)
    got = [sub.data["aa"].ids[sub.data["aa"].offsets[i] : sub.data["aa"].offsets[i + 1]] for i in range(5)]
    assert [[f"w{w}" for w in d[1:]] for d in got] == [e.split() for e in expect] and all(d[0] == 1 for d in got)
    packed = P.sample_documents(tok, 3, doc_mode="pack", seq_len=16)
    batches = make_batches(
        packed, batch_size=4, seq_len=16, mode="pack", max_tokens=3 * 16, process_index=0, process_count=1
    )
    assert batches.rows == {"aa": 3, "bb": 3} and batches.tokens == {"aa": 48, "bb": 48}
    with pytest.raises(P.PLNDError, match=r"'aa' has \d+ tokens, fewer than 20 windows of 16"):
        P.sample_documents(tok, 20, doc_mode="pack", seq_len=16)


def test_gqa_index_fixed_and_released():
    # 6 query heads, 2 kv heads (group 3), head_dim 8: d = h*8 + j
    d = np.array([0, 5, 8 + 1, 2 * 8 + 7, 3 * 8 + 5, 5 * 8 + 7])
    np.testing.assert_array_equal(P.gqa_kv_index(d, 6, 2, 8), [0, 5, 1, 7, 13, 15])  # (h // 3)*8 + j
    np.testing.assert_array_equal(P.gqa_kv_index(d, 6, 2, 8, gqa_bug=True), [0, 1, 3, 7, 9, 15])  # d // 3
    np.testing.assert_array_equal(P.gqa_kv_index(d, 6, 6, 8), d)  # no GQA: both are the identity
    np.testing.assert_array_equal(P.gqa_kv_index(d, 6, 6, 8, gqa_bug=True), d)
    with pytest.raises(P.PLNDError, match="must lie in"):
        P.gqa_kv_index([48], 6, 2, 8)


def _hand_result(model, ffn, qk, vo):
    """A one-language PLND result (plus an empty second language, so nothing is shared) with the given units."""
    c = model.config
    counts = {}
    for name, units, n in (
        ("ffn", ffn, c.d_ff),
        ("qk", qk, c.num_heads * c.head_dim),
        ("vo", vo, c.num_heads * c.head_dim),
    ):
        a = np.zeros((2, c.num_layers, n), np.int64)
        for layer, idx in units.items():
            a[0, layer, idx] = 1
        counts[name] = a
    meta = {
        "num_heads": c.num_heads,
        "num_kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "mode": "code",
        "model": model.name,
    }
    return P.PLNDResult(["xx", "yy"], [1, 1], counts, meta=meta)


def _torch_logits(torch_model, ids, zero):
    """Logits of a copy of the HF model with rows/columns zeroed by hand: zero[(layer, module)] = (axis, indices)."""
    import torch

    m = copy.deepcopy(torch_model)
    with torch.no_grad():
        for (layer, name), (axis, idx) in zero.items():
            mod = m.model.layers[layer].mlp if name in ("up_proj", "down_proj") else m.model.layers[layer].self_attn
            w = getattr(mod, name).weight
            if axis == 0:
                w[list(idx), :] = 0.0
            else:
                w[:, list(idx)] = 0.0
        return m(torch.as_tensor(ids)).logits.numpy()


def test_deactivation_with_the_fixed_gqa_mapping_equals_zeroing_the_right_hf_rows(llama, tiny_dirs):
    _, torch_model = tiny_dirs["llama2"]
    ids = np.random.default_rng(1).integers(3, llama.config.vocab_size, (2, 10))
    # layer 1: query dims 29 = head 3, j 5 (kv row (3//3)*8+5 = 13; released 29//3 = 9)
    # and 17 = head 2, j 1 (row 1; released 5)
    r = _hand_result(
        llama, ffn={0: [5, 7]}, qk={1: [29, 17]}, vo={2: [40]}
    )  # v: 40 = head 5, j 0 -> row 8 (released 13)
    zero_fixed = {
        (0, "up_proj"): (0, [5, 7]),
        (0, "down_proj"): (1, [5, 7]),
        (1, "q_proj"): (0, [29, 17]),
        (1, "k_proj"): (0, [13, 1]),
        (2, "v_proj"): (0, [8]),
    }
    zero_bug = dict(zero_fixed)
    zero_bug.update({(1, "k_proj"): (0, [9, 5]), (2, "v_proj"): (0, [13])})
    fixed = llama.logits(ids, edits=P.plnd_edits(r, "xx", model=llama))
    bug = llama.logits(ids, edits=P.plnd_edits(r, "xx", model=llama, gqa_bug=True))
    ref_fixed, ref_bug = (
        _torch_logits(torch_model, ids, zero_fixed),
        _torch_logits(torch_model, ids, zero_bug),
    )
    plain = llama.logits(ids)
    assert np.abs(fixed - plain).max() > 1e-3 and np.abs(fixed - bug).max() > 1e-3
    np.testing.assert_allclose(fixed, ref_fixed, atol=1e-4, rtol=0)
    np.testing.assert_allclose(bug, ref_bug, atol=1e-4, rtol=0)
    # the parts are separable; "o" zeroes o_proj columns of the V/O dims; layers restrict the edit
    only_k = P.plnd_edits(r, "xx", parts=["k"])
    assert np.asarray(only_k.mask).sum() == 0 and np.asarray(only_k.attn.q).min() == 1.0
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(only_k.attn.k)[1] == 0), [1, 13])
    o = P.plnd_edits(r, "xx", parts=["o"])
    np.testing.assert_allclose(
        llama.logits(ids, edits=o), _torch_logits(torch_model, ids, {(2, "o_proj"): (1, [40])}), atol=1e-4, rtol=0
    )
    assert np.asarray(P.plnd_edits(r, "xx", layers=[1]).mask).sum() == 0
    both = P.plnd_edits(r, ["xx", "yy"])  # several languages: the union ("yy" has no unit)
    np.testing.assert_array_equal(np.asarray(both.attn.k), np.asarray(P.plnd_edits(r, "xx").attn.k))


# ----------------------------------------------------------------------------- the pass: mesh, files, CLI


def _docs(rng, n, lo, hi):
    return [" ".join(f"w{w}" for w in rng.integers(lo, hi, rng.integers(3, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def shardable(tmp_path_factory):
    """A Llama whose heads (4) and neurons (64) divide a 4-way model axis; 2 kv heads stay replicated."""
    pytest.importorskip("torch")
    from tiny_models import save_tiny
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("plnd") / "llama_4h"
    cfg = LlamaConfig(
        vocab_size=131,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    save_tiny(cfg, path)
    return path


def test_mesh_equals_one_device(shardable):
    assert len(jax.devices()) >= 8
    rng = np.random.default_rng(3)
    corpus = {
        "aa": _docs(rng, 9, 4, 60),
        "bb": _docs(rng, 9, 50, 131),
        "cc": _docs(rng, 9, 4, 131),
    }
    one = jlang.load_model(shardable, progress=False)
    mesh = jlang.parallel.make_mesh(data=2, model=4)
    sharded = jlang.load_model(shardable, progress=False, mesh=mesh)
    kw = {
        "documents_per_language": 5,
        "top_ffn": 12,
        "top_attn": 6,
        "seq_len": 16,
        "batch_size": 4,
        "progress": False,
    }
    r1 = P.plnd(one, corpus, **kw)
    r8 = P.plnd(sharded, corpus, **kw)
    assert r1.documents.tolist() == [5, 5, 5] == r8.documents.tolist()
    for part in P.PARTS:
        np.testing.assert_array_equal(r1.counts[part], r8.counts[part], err_msg=part)
    assert r1.ffn == r8.ffn and sum(r1.activated(p).sum() for p in P.PARTS) > 0
    ids, valid = _batch(one, b=4)
    s1, s8 = P.document_scores(one, ids, valid), P.document_scores(sharded, ids, valid)
    for part in P.PARTS:
        np.testing.assert_allclose(s1[part], s8[part], rtol=1e-4, atol=1e-6, err_msg=part)


def test_save_load_and_original_text(llama, tmp_path):
    rng = np.random.default_rng(4)
    corpus = {"aa": _docs(rng, 8, 4, 70), "bb": _docs(rng, 8, 60, 131)}
    kw = {
        "documents_per_language": 4,
        "top_ffn": 30,
        "top_attn": 20,
        "seq_len": 16,
        "batch_size": 4,
        "mode": "paper",
        "progress": False,
    }
    r = P.plnd(llama, corpus, **kw)
    assert r.meta["mode"] == "paper" and r.meta["num_kv_heads"] == 2 and r.documents.tolist() == [4, 4]
    back = P.PLNDResult.load(r.save(tmp_path / "plnd.npz"))
    assert back.languages == r.languages and back.meta["top_ffn"] == 30
    for part in P.PARTS:
        np.testing.assert_array_equal(back.counts[part], r.counts[part])
    np.load(tmp_path / "plnd.npz")  # NumPy alone opens it
    [path_aa, _] = r.to_original_text(tmp_path / "original")
    read = P.read_original_text(path_aa)
    lines = path_aa.read_text().splitlines()
    assert len(lines) == 5 and lines[0] == lines[1] and lines[2] == lines[3] and lines[0].startswith("{0: ")
    act = {p: r.activated(p)[0] for p in P.PARTS}
    for name, part in (
        ("fwd_up", "ffn"),
        ("fwd_down", "ffn"),
        ("q", "qk"),
        ("k", "qk"),
        ("v", "vo"),
    ):
        assert read[name] == {l: set(np.flatnonzero(act[part][l]).tolist()) for l in range(3)}, name
    shared_any = any(r.shared(p).any() for p in P.PARTS)
    assert (r.original_text("aa", specific=True) != r.original_text("aa")) == shared_any
    png = r.plot_heatmap(tmp_path / "plnd.png")
    assert png.stat().st_size > 1000
    # FFN only (no attention score): the same FFN counts
    ffn = P.plnd(llama, corpus, **dict(kw, parts=["ffn"]))
    assert ffn.parts == ("ffn",) and ffn.attn_width == 48
    np.testing.assert_array_equal(P.PLNDResult.load(ffn.save(tmp_path / "f.npz")).counts["ffn"], r.counts["ffn"])
    with pytest.raises(P.PLNDError, match="'qk' was not scored"):
        P.plnd_edits(ffn, "aa", parts=["ffn", "q"])
    assert np.asarray(P.plnd_edits(ffn, "aa", parts=["ffn"]).mask).sum() == r.ffn["aa"].sum()


def test_cli_writes_masks_summary_and_heatmap(tiny_dirs, tmp_path, capsys):
    from jlang.cli import main
    from jlang.masks import NeuronMasks

    rng = np.random.default_rng(5)
    root = tmp_path / "corpus" / "train"
    root.mkdir(parents=True)
    for lang, lo in (("aa", 4), ("bb", 60)):
        (root / f"{lang}.txt").write_text("\n".join(_docs(rng, 10, lo, lo + 70)) + "\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "plnd",
                "--model",
                str(tiny_dirs["llama2"][0]),
                "--corpus",
                str(tmp_path / "corpus"),
                "--languages",
                "aa",
                "bb",
                "--documents",
                "4",
                "--top-ffn",
                "30",
                "--top-attn",
                "20",
                "--seq-len",
                "16",
                "--batch-size",
                "4",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    masks = NeuronMasks.load(out / "masks.npz")
    assert masks.languages == ["aa", "bb"] and masks.masks.shape == (2, 3, 83) and masks.meta["method"] == "plnd-code"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_language"]["aa"]["documents"] == 4 and summary["top_attn"] == 20
    assert P.PLNDResult.load(out / "plnd.npz").languages == ["aa", "bb"]
    assert (out / "plnd.png").stat().st_size > 1000 and len(list((out / "original").glob("*.txt"))) == 2
    assert "aa" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_fail_early_and_say_why(llama):
    docs = {"aa": ["w4 w5 w6", "w7 w8 w9", "w4 w4"], "bb": ["w10 w11 w12", "w13 w14"]}
    kw = {"documents_per_language": 2, "top_ffn": 10, "top_attn": 10, "progress": False}
    with pytest.raises(P.PLNDError, match="unknown PLND mode 'fast'"):
        P.plnd(llama, docs, **dict(kw, mode="fast"))
    with pytest.raises(P.PLNDError, match="unknown PLND mode"):
        P.document_scores(llama, [[4, 5]], mode="Code")
    with pytest.raises(P.PLNDError, match=r"top_ffn=84 must be an integer in \[1, 83\]"):
        P.plnd(llama, docs, **dict(kw, top_ffn=84))
    with pytest.raises(
        P.PLNDError,
        match=r"top_attn=49 must be an integer in \[1, 48\].*heads x head_dim",
    ):
        P.plnd(llama, docs, **dict(kw, top_attn=49))
    with pytest.raises(P.PLNDError, match="top_ffn=0"):
        P.plnd(llama, docs, **dict(kw, top_ffn=0))
    with pytest.raises(P.PLNDError, match="'bb' has 2 documents, fewer than 3"):
        P.plnd(llama, docs, **dict(kw, documents_per_language=3))
    with pytest.raises(ValueError, match="bb"):  # an empty language is named before any work
        P.plnd(llama, {"aa": docs["aa"], "bb": []}, **kw)
    with pytest.raises(P.PLNDError, match="shared language 'zz'"):
        P.plnd(llama, docs, **dict(kw, shared_languages=["zz"]))
    zeros = {p: np.zeros((2, 1, 3), np.int64) for p in P.PARTS}
    with pytest.raises(P.PLNDError, match=r"\['bb'\] have no document"):
        P.PLNDResult(["aa", "bb"], [3, 0], zeros)
    r = _hand_result(llama, ffn={0: [1]}, qk={}, vo={})
    with pytest.raises(P.PLNDError, match="unknown parts"):
        P.plnd_edits(r, "xx", parts=["up"])
    with pytest.raises(jlang.masks.UnknownLanguageError, match="holds"):
        P.plnd_edits(r, "fr")
    with pytest.raises(P.PLNDError, match="layer 3 out of range"):
        P.plnd_edits(r, "xx", layers=[3])
