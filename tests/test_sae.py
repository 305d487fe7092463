"""Sparse autoencoders and SAE-LAPE: planted features, TopK, exact resume, splices, identification, language ID."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jlang.io.checkpoint import ResumeError
from jlang.sae import classify as C
from jlang.sae import evaluation as E
from jlang.sae import lape as LP
from jlang.sae import model as M
from jlang.sae import steer as S
from jlang.sae import stream as ST
from jlang.sae import train as T

# ----------------------------------------------------------------------------- helpers


def planted(n=12000, d=24, num=32, active=3, seed=0, offset=0.5):
    """Tokens = sums of `active` of `num` random unit directions with magnitudes in [1, 3] (+ an offset)."""
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(num, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    idx = np.stack([rng.choice(num, active, replace=False) for _ in range(n)])
    mags = rng.uniform(1, 3, size=(n, active))
    return (np.einsum("nk,nkd->nd", mags, D[idx]) + offset).astype(np.float32), D


def best_cosines(D: np.ndarray, sae: M.SAE) -> np.ndarray:
    W = np.asarray(sae.params["W_dec"])
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    return (D @ W.T).max(axis=1)


def exact_sae(d: int, kind: str, layer: int, point: str = "mlp.out") -> M.SAE:
    """An SAE that reconstructs exactly: features +e_i and -e_i, so x = relu(x) - relu(-x)."""
    eye = np.eye(d, dtype=np.float32)
    W_dec = np.concatenate([eye, -eye])
    params = {
        "W_enc": W_dec.T.copy(),
        "b_enc": np.zeros(2 * d, np.float32),
        "W_dec": W_dec,
        "b_dec": np.zeros(d, np.float32),
    }
    return M.SAE(M.SAEConfig(d_in=d, num_features=2 * d, kind=kind, k=d, layer=layer, hook_point=point), params)


@pytest.fixture(scope="module")
def tiny():
    """A tiny random Gemma 3 (4 layers, d_model 48, word-level tokenizer over w4..w130)."""
    pytest.importorskip("torch")
    import tempfile
    from pathlib import Path

    from tiny_models import family_configs, save_tiny

    import jlang

    root = Path(tempfile.mkdtemp(prefix="jlang-sae-tiny-")) / "gemma3"
    save_tiny(family_configs()["gemma3"], root)
    return jlang.load_model(root, progress=False)


def tiny_corpus(seed=0, n=120):
    """Three made-up languages over disjoint word ranges."""
    rng = np.random.default_rng(seed)
    ranges = {"aa": (4, 40), "bb": (40, 80), "cc": (80, 131)}
    return {
        lang: [" ".join(f"w{rng.integers(lo, hi)}" for _ in range(rng.integers(3, 10))) for _ in range(n)]
        for lang, (lo, hi) in ranges.items()
    }


# ----------------------------------------------------------------------------- the SAE maps


def test_topk_keeps_exactly_k_and_they_are_the_largest():
    cfg = M.SAEConfig(d_in=8, num_features=20, kind="topk", k=5)
    params = M.init_params(jax.random.key(0), cfg)
    params["b_enc"] = jnp.full((20,), 100.0)  # every pre-activation positive: exactly k survive
    x = jax.random.normal(jax.random.key(1), (7, 3, 8))
    acts = np.asarray(M.encode(params, x, cfg))
    assert acts.shape == (7, 3, 20)
    assert ((acts > 0).sum(-1) == 5).all()
    pre = np.asarray(M.pre_activations(params, x))
    top = np.argsort(-pre, axis=-1)[..., :5]
    np.testing.assert_array_equal(
        np.sort(np.nonzero(acts.reshape(-1, 20))[1].reshape(-1, 5), -1), np.sort(top.reshape(-1, 5), -1)
    )
    np.testing.assert_allclose(np.take_along_axis(acts, top, -1), np.take_along_axis(pre, top, -1), rtol=1e-6)
    # negative pre-activations are never kept, even among the top k
    params["b_enc"] = jnp.full((20,), -100.0)
    assert (np.asarray(M.encode(params, x, cfg)) == 0).all()
    # the sparse decode is the dense decode of the dense codes
    params["b_enc"] = jnp.zeros((20,))
    dense = M.decode(params, M.encode(params, x, cfg))
    np.testing.assert_allclose(np.asarray(M.reconstruct(params, x, cfg)), np.asarray(dense), rtol=1e-5, atol=1e-5)


def test_fold_scale_gives_the_same_sae_on_raw_activations():
    for kind in ("topk", "relu"):
        cfg = M.SAEConfig(d_in=6, num_features=12, kind=kind, k=3)
        p = M.init_params(jax.random.key(2), cfg, b_dec=jnp.arange(6.0) / 10)
        p["b_enc"] = jax.random.normal(jax.random.key(3), (12,)) * 0.1
        x = jax.random.normal(jax.random.key(4), (5, 6)) * 7.0
        s = 3.5
        folded = M.fold_scale(p, s)
        np.testing.assert_allclose(M.encode(folded, x, cfg), s * M.encode(p, x / s, cfg), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            M.reconstruct(folded, x, cfg), s * M.reconstruct(p, x / s, cfg), rtol=1e-5, atol=1e-4
        )


def test_decoder_constraint_unit_rows_and_tangent_gradient():
    cfg = M.SAEConfig(d_in=5, num_features=9, k=2)
    p = M.init_params(jax.random.key(0), cfg)
    p["W_dec"] = p["W_dec"] * jnp.arange(1.0, 10.0)[:, None]
    p = M.normalize_decoder(p)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(p["W_dec"]), axis=1), 1.0, rtol=1e-6)
    g = {k: jax.random.normal(jax.random.key(5), v.shape) for k, v in p.items()}
    g2 = M.remove_parallel_grad(g, p)
    np.testing.assert_allclose(np.sum(np.asarray(g2["W_dec"]) * np.asarray(p["W_dec"]), axis=1), 0.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(g2["W_enc"]), np.asarray(g["W_enc"]))


# ----------------------------------------------------------------------------- training


def test_topk_sae_recovers_planted_features():
    x, D = planted()
    cfg = M.SAEConfig(d_in=24, num_features=64, kind="topk", k=3)
    res = T.train_sae(
        ST.ArrayStream(x, 1024),
        cfg,
        T.TrainConfig(steps=400, sae_batch=256, lr=3e-3, warmup_steps=20, dead_window=4000, log_every=50),
        progress=False,
    )
    cos = best_cosines(D, res.sae)
    assert cos[0] > 0.9  # the planted direction 0 has a decoder row along it
    assert (cos > 0.9).mean() >= 0.9 and np.median(cos) > 0.95, np.sort(cos)[:5]
    assert res.history[-1]["ev"] > 0.9 and res.history[-1]["l0"] == pytest.approx(3.0)
    # the reconstruction of the raw activations (scale folded back in) is as good
    ev = 1 - np.sum((res.sae.reconstruct(x[:2000]) - x[:2000]) ** 2) / np.sum((x[:2000] - x[:2000].mean(0)) ** 2)
    assert ev > 0.9


def test_relu_l1_sae_recovers_a_planted_feature():
    x, D = planted(n=8000, d=12, num=8, active=2, seed=1)
    cfg = M.SAEConfig(d_in=12, num_features=32, kind="relu")
    res = T.train_sae(
        ST.ArrayStream(x, 1024),
        cfg,
        T.TrainConfig(steps=400, sae_batch=256, lr=3e-3, warmup_steps=20, l1_coeff=2.0, log_every=50),
        progress=False,
    )
    cos = best_cosines(D, res.sae)
    assert cos[0] > 0.9 and np.median(cos) > 0.9, np.sort(cos)
    assert res.history[-1]["l0"] < 8  # sparse: far fewer than the 32 features fire per token


def test_resume_gives_bit_identical_params_array_stream(tmp_path):
    x, _ = planted(n=3000, d=8, num=10)
    cfg = M.SAEConfig(d_in=8, num_features=16, kind="topk", k=2)
    tc = T.TrainConfig(steps=48, sae_batch=128, reuse=2, log_every=4, dead_window=500)
    full = T.train_sae(ST.ArrayStream(x, 512, seed=3), cfg, tc, progress=False)  # 6 batches per epoch: crosses epochs
    ckpt = tmp_path / "ckpt"
    part = T.train_sae(ST.ArrayStream(x, 512, seed=3), cfg, tc, checkpoint_dir=ckpt, stop_after=24, progress=False)
    assert not part.finished and part.steps == 24
    with pytest.raises(ResumeError, match="pass resume"):
        T.train_sae(ST.ArrayStream(x, 512, seed=3), cfg, tc, checkpoint_dir=ckpt, progress=False)
    other = dataclasses.replace(tc, lr=1e-3)
    with pytest.raises(ResumeError, match="different run"):
        T.train_sae(ST.ArrayStream(x, 512, seed=3), cfg, other, checkpoint_dir=ckpt, resume=True, progress=False)
    rest = T.train_sae(ST.ArrayStream(x, 512, seed=3), cfg, tc, checkpoint_dir=ckpt, resume=True, progress=False)
    assert rest.resumed_from == 24 and rest.finished and rest.steps == 48
    for k in M.PARAM_NAMES:
        np.testing.assert_array_equal(rest.sae.params[k], full.sae.params[k], err_msg=k)
    np.testing.assert_array_equal(rest.since_fired, full.since_fired)
    assert rest.history == full.history and rest.tokens == full.tokens

    # SIGTERM mid-run: a checkpoint at the next model-batch boundary, RunInterrupted, then an exact resume
    import os
    import signal

    from jlang.io.checkpoint import RunInterrupted

    class Killed(ST.ArrayStream):
        def next(self):
            if self.epoch == 0 and self.position == 3 * 512:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().next()

    with pytest.raises(RunInterrupted) as info:
        T.train_sae(Killed(x, 512, seed=3), cfg, tc, checkpoint_dir=tmp_path / "k", progress=False)
    assert info.value.done == 32 and info.value.exit_code == 128 + signal.SIGTERM
    again = T.train_sae(
        ST.ArrayStream(x, 512, seed=3), cfg, tc, checkpoint_dir=tmp_path / "k", resume=True, progress=False
    )
    assert again.resumed_from == 32
    np.testing.assert_array_equal(again.sae.params["W_dec"], full.sae.params["W_dec"])


def test_resume_from_the_model_stream_is_bit_identical(tiny, tmp_path):
    """Activations streamed from a model through the grain pipeline; the run crosses an epoch boundary."""
    tok = ST.load_tokenized(tiny, {k: v[:6] for k, v in tiny_corpus().items()}, progress=False)
    cfg = M.SAEConfig(d_in=48, num_features=32, kind="topk", k=4, layer=1)
    tc = T.TrainConfig(steps=24, sae_batch=32, log_every=4)

    def stream():
        return ST.ActivationStream(tiny, tok, layer=1, batch_size=2, seq_len=16, seed=5)

    s = stream()
    assert len(s._batches) * 2 < tc.steps  # two steps per batch: the run needs more than one epoch
    full = T.train_sae(s, cfg, tc, progress=False)
    assert s.epoch >= 1
    part = T.train_sae(stream(), cfg, tc, checkpoint_dir=tmp_path / "c", stop_after=10, progress=False)
    assert part.steps == 10
    rest = T.train_sae(stream(), cfg, tc, checkpoint_dir=tmp_path / "c", resume=True, progress=False)
    for k in M.PARAM_NAMES:
        np.testing.assert_array_equal(rest.sae.params[k], full.sae.params[k], err_msg=k)
    assert rest.history == full.history


def test_sharded_training_matches_one_device_and_resumes_exactly(tmp_path):
    from jlang.parallel import make_mesh

    x, _ = planted(n=2048, d=8, num=10)
    cfg = M.SAEConfig(d_in=8, num_features=16, kind="topk", k=2)
    tc = T.TrainConfig(steps=8, sae_batch=128, log_every=4)
    one = T.train_sae(ST.ArrayStream(x, 512), cfg, tc, progress=False)
    mesh = make_mesh(data=2, model=4)
    many = T.train_sae(ST.ArrayStream(x, 512, mesh=mesh), cfg, tc, progress=False)
    for k in M.PARAM_NAMES:
        np.testing.assert_allclose(many.sae.params[k], one.sae.params[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # a sharded run restores its state onto the same shardings and ends where the uninterrupted one does
    T.train_sae(ST.ArrayStream(x, 512, mesh=mesh), cfg, tc, checkpoint_dir=tmp_path / "c", stop_after=4, progress=False)
    rest = T.train_sae(
        ST.ArrayStream(x, 512, mesh=mesh), cfg, tc, checkpoint_dir=tmp_path / "c", resume=True, progress=False
    )
    for k in M.PARAM_NAMES:
        np.testing.assert_array_equal(rest.sae.params[k], many.sae.params[k], err_msg=k)


def test_hook_activations_of_the_model_prefix_equal_the_full_forward(tiny):
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 131, (2, 9)), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(9, dtype=jnp.int32), (2, 9))
    valid = jnp.ones((2, 9), bool)
    _, full = tiny.forward(ids, probe=lambda points, v: points["mlp.out"])
    part = ST.hook_activations(tiny.params, ids, pos, valid, cfg=tiny.config, layer=2, point="mlp.out")
    np.testing.assert_allclose(np.asarray(part), np.asarray(full[2]), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- splices and evaluation


@pytest.mark.parametrize("kind", ["topk", "relu"])
def test_splicing_an_exact_sae_leaves_the_logits_unchanged(tiny, kind):
    sae = exact_sae(tiny.config.d_model, kind, layer=2)
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 131, (2, 11)), jnp.int32)
    clean, _ = tiny.forward(ids)
    splice = E.sae_splice("mlp.out", kind, sae.config.k)
    args = {"layer": jnp.int32(2), "mode": jnp.int32(1), "params": sae.jax_params}
    spliced, _ = tiny.forward(ids, splice=splice, splice_args=args)
    np.testing.assert_allclose(np.asarray(spliced), np.asarray(clean), rtol=0, atol=1e-5)
    zeroed, _ = tiny.forward(ids, splice=splice, splice_args={**args, "mode": jnp.int32(2)})
    assert np.abs(np.asarray(zeroed) - np.asarray(clean)).max() > 1e-3  # the splice does act on layer 2
    if kind == "relu":
        return  # one evaluation is enough (it compiles the whole model three ways)
    tok = ST.load_tokenized(tiny, {k: v[:6] for k, v in tiny_corpus().items()}, progress=False)
    ev = E.evaluate(tiny, sae, ST.sentence_rows(tok, max_len=16), batch_size=8, vocab_chunk=64, progress=False)
    assert abs(ev["delta_nll"]) < 1e-5 and ev["ev"] > 1 - 1e-6 and ev["mse"] < 1e-8
    assert ev["loss_recovered"] == pytest.approx(1.0, abs=1e-4) and ev["l0"] <= tiny.config.d_model


def test_steering_adds_the_vector_at_the_hook_and_the_cached_decoder_matches_full_recomputation(tiny):
    d, L = tiny.config.d_model, tiny.config.num_layers
    ids = jnp.asarray(np.random.default_rng(2).integers(3, 131, (2, 7)), jnp.int32)
    v = np.random.default_rng(3).normal(size=(2, d)).astype(np.float32)
    args = {"vectors": jnp.asarray(S.vector_table(v, 1, L)), "where": jnp.ones((2, 7), bool)}
    probe = lambda points, valid: points["mlp.out"]
    _, clean = tiny.forward(ids, probe=probe)
    _, steered = tiny.forward(ids, probe=probe, splice=S.steer_splice("mlp.out"), splice_args=args)
    np.testing.assert_allclose(np.asarray(steered[1] - clean[1]), np.broadcast_to(v[:, None], (2, 7, d)), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(steered[0]), np.asarray(clean[0]))

    prompts, tok, width, new = ["w5 w6 w7 w8", "w90 w91"], tiny.tokenizer, 16, 6

    def reference(table):
        """Greedy decoding by full recomputation of a fixed buffer, the vectors added at every position."""
        out = []
        for i, prompt in enumerate(prompts):
            buf = np.zeros((1, width), np.int32)
            ids = tok(prompt)["input_ids"]
            buf[0, : len(ids)] = ids
            n = len(ids)
            args_i = {"vectors": jnp.asarray(table[i : i + 1]), "where": jnp.ones((1, width), bool)}
            for _ in range(new):
                logits, _ = tiny.forward(jnp.asarray(buf), splice=S.steer_splice("mlp.out"), splice_args=args_i)
                buf[0, n] = int(np.argmax(np.asarray(logits)[0, n - 1]))
                n += 1
            out.append(tok.decode(buf[0, len(ids) : n], skip_special_tokens=True))
        return out

    zeros = np.zeros((2, L, d), np.float32)
    plain = S.generate_steered(tiny, prompts, zeros, max_new_tokens=new, repetition_penalty=1.0)
    assert plain == reference(zeros)
    for seed in range(8):  # Gemma's post-MLP norm bounds the effect: some direction changes the text
        table = S.vector_table(30 * np.random.default_rng(seed).normal(size=(2, d)), 1, L)
        steered_text = S.generate_steered(tiny, prompts, table, max_new_tokens=new, repetition_penalty=1.0)
        if steered_text != plain:
            break
    assert steered_text != plain
    assert steered_text == reference(table)  # the cached decoder steers every generated token


def test_steering_vector_is_the_weighted_sum_of_decoder_rows():
    cfg = M.SAEConfig(d_in=4, num_features=6, k=2, layer=3)
    sae = M.SAE(cfg, {k: np.asarray(v) for k, v in M.init_params(jax.random.key(0), cfg).items()})
    feats = LP.identify(handmade_stats(), threshold_ratio=0.8)
    feats.layers = [3]
    ids, mx = feats.features[0][0], feats.max_active[0][0]
    want = sum(0.3 * m * sae.params["W_dec"][f] for f, m in zip(ids, mx))
    np.testing.assert_allclose(S.steering_vector(sae, feats, "aa", 0.3), want, rtol=1e-6)
    with pytest.raises(M.SAEError, match="not one of"):
        S.steering_vector(sae, feats, "zz", 0.3)


# ----------------------------------------------------------------------------- SAE-LAPE on hand-made statistics


def handmade_stats() -> LP.FeatureStats:
    """3 languages x 1 layer x 6 features, 50 examples and 1000 tokens each. The known answer:

    f0 fires only in aa (400 tokens, 50 examples)                 -> aa
    f1 fires in aa and bb alike (300 each)                        -> aa, bb (shared)
    f2 fires in all three alike (200 each)                        -> aa, bb, cc (highest entropy)
    f3 fires in bb on 500 tokens but only 48 of 50 examples      -> not a candidate (needs int(0.98*50) = 49)
    f4 fires in cc in every example on exactly int(0.1*1000) = 100 tokens -> not a candidate (needs > 100)
    f5 fires in cc on 600 tokens, in aa on 350 (ratio 0.583)     -> cc, and aa when threshold_ratio <= 0.583
    """
    K, F = 3, 6
    tok = np.zeros((K, 1, F), np.int64)
    ex = np.zeros((K, 1, F), np.int64)
    tok[0, 0, 0], ex[0, 0, 0] = 400, 50
    tok[:2, 0, 1], ex[:2, 0, 1] = 300, 50
    tok[:, 0, 2], ex[:, 0, 2] = 200, 49
    tok[1, 0, 3], ex[1, 0, 3] = 500, 48
    tok[2, 0, 4], ex[2, 0, 4] = 100, 50
    tok[2, 0, 5], ex[2, 0, 5] = 600, 50
    tok[0, 0, 5], ex[0, 0, 5] = 350, 40
    mx = np.where(tok > 0, 2.0 + np.arange(F), 0.0).astype(np.float32)
    mx[1, 0, 1] = 9.0  # the global max of f1 is bb's
    mn = np.where(tok > 0, 0.5, np.inf).astype(np.float32)
    return LP.FeatureStats(["aa", "bb", "cc"], [0], np.full(K, 1000), np.full(K, 50), tok, ex, tok * 1.5, mx, mn)


def test_candidate_filter_and_identification_on_handmade_counts():
    st = handmade_stats()
    np.testing.assert_array_equal(LP.candidate_filter(st)[0], [True, True, True, False, False, True])
    r = LP.identify(st)  # threshold 0.5: f5 is cc's and aa's
    assert r.meta["candidates"] == 4
    assert [r.features[k][0].tolist() for k in range(3)] == [[0, 1, 2, 5], [1, 2], [2, 5]]
    np.testing.assert_allclose(r.max_active[0][0], [2.0, 9.0, 4.0, 7.0])
    np.testing.assert_allclose(r.min_active[1][0], [0.5, 0.5])
    np.testing.assert_allclose(r.avg_active[2][0], [1.5, 1.5])
    assert np.isinf(r.entropy[0, 3]) and np.isinf(r.entropy[0, 4]) and r.entropy[0, 0] == 0.0
    assert r.entropy[0, 2] == pytest.approx(np.log(3))
    strict = LP.identify(st, threshold_ratio=0.8)
    assert [strict.features[k][0].tolist() for k in range(3)] == [[0, 1, 2], [1, 2], [2, 5]]
    specific = LP.identify(st, threshold_ratio=0.8, lang_specific=True)
    assert [specific.features[k][0].tolist() for k in range(3)] == [[0], [], [5]]
    assert specific.counts() == {"aa": 1, "bb": 0, "cc": 1}
    # top 1 per language: the lowest entropy (f0 for aa, f1 for bb); by frequency: the highest p (f5 for cc)
    assert [LP.identify(st, top=1).features[k][0].tolist() for k in range(3)] == [[0], [1], [5]]
    assert LP.identify(st, top=1, top_by_frequency=True).features[0][0].tolist() == [0]
    assert LP.identify(st, top=2, top_by_frequency=True).features[2][0].tolist() == [2, 5]
    # entropies: f0 0, f5 0.658 (p 0.35 vs 0.6), f1 ln 2 = 0.693, f2 ln 3
    assert r.entropy[0, 5] == pytest.approx(-(7 / 19) * np.log(7 / 19) - (12 / 19) * np.log(12 / 19))
    ent = LP.identify(st, entropy_threshold=0.67)
    assert [ent.features[k][0].tolist() for k in range(3)] == [[0, 5], [], [5]]
    # relaxed filters admit f3 and f4
    loose = LP.identify(st, example_rate=0.9, token_rate=0.05)
    assert loose.meta["candidates"] == 6 and 3 in loose.features[1][0] and 4 in loose.features[2][0]


def test_feature_stats_and_results_round_trip(tmp_path):
    st = handmade_stats()
    back = LP.FeatureStats.load(st.save(tmp_path / "stats.npz"))
    np.testing.assert_array_equal(back.over_zero_token, st.over_zero_token)
    assert back.languages == st.languages and back.layers == [0]
    r = LP.identify(st)
    r2 = LP.SAELapeFeatures.load(r.save(tmp_path / "features.npz"))
    assert [f[0].tolist() for f in r2.features] == [f[0].tolist() for f in r.features]
    np.testing.assert_allclose(r2.max_active[0][0], r.max_active[0][0])
    sae = exact_sae(4, "topk", 1)
    sae2 = M.SAE.load(sae.save(tmp_path / "sae.npz"))
    assert sae2.config == sae.config
    np.testing.assert_array_equal(sae2.params["W_dec"], sae.params["W_dec"])


def test_feature_stats_from_the_model_count_exactly(tiny):
    """The device reductions equal a direct count over the encoded activations (BOS and padding left out)."""
    corpus = {k: v[:5] for k, v in tiny_corpus(seed=3).items()}
    tok = ST.load_tokenized(tiny, corpus, progress=False)
    rows = ST.sentence_rows(tok, max_len=16)
    cfg = M.SAEConfig(d_in=48, num_features=24, kind="topk", k=3, layer=1)
    sae = M.SAE(cfg, {k: np.asarray(v) for k, v in M.init_params(jax.random.key(1), cfg).items()})
    st = LP.feature_stats(tiny, sae, rows, list(tok.languages), batch_size=4, progress=False)
    want_tok = np.zeros((3, 24), np.int64)
    want_ex = np.zeros((3, 24), np.int64)
    want_max = np.zeros((3, 24), np.float32)
    ntok = np.zeros(3, np.int64)
    n, w = rows.ids.shape
    pos = jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32), (n, w))
    acts = ST.hook_activations(
        tiny.params, jnp.asarray(rows.ids), pos, jnp.asarray(rows.attend), cfg=tiny.config, layer=1, point="mlp.out"
    )
    codes = sae.encode(np.asarray(acts))
    for i in range(n):
        a = codes[i, 1 : rows.lengths[i]]  # position 0 is BOS; right padding left out
        k = rows.group[i]
        want_tok[k] += (a > 0).sum(0)
        want_ex[k] += (a > 0).any(0)
        want_max[k] = np.maximum(want_max[k], a.max(0))
        ntok[k] += rows.lengths[i] - 1
    np.testing.assert_array_equal(st.over_zero_token[:, 0], want_tok)
    np.testing.assert_array_equal(st.over_zero_example[:, 0], want_ex)
    np.testing.assert_array_equal(st.num_tokens, ntok)
    np.testing.assert_array_equal(st.num_examples, [5, 5, 5])
    np.testing.assert_allclose(st.max[:, 0], want_max, rtol=1e-5)


# ----------------------------------------------------------------------------- language ID


def test_classifiers_on_handmade_counts():
    feats = LP.identify(handmade_stats(), threshold_ratio=0.8, lang_specific=True)  # aa: {f0}, bb: {}, cc: {f5}
    counts = np.zeros((4, 1, 6), np.int32)
    counts[0, 0, 0] = 3  # aa
    counts[1, 0, 5] = 2  # cc
    counts[2, 0, [0, 5]] = [1, 4]  # cc wins 4 to 1
    # row 3: nothing fires -> the first language (aa), as torch.argmax
    scores = C.language_scores(feats, counts)
    np.testing.assert_array_equal(scores, [[3, 0, 0], [0, 0, 2], [1, 0, 4], [0, 0, 0]])
    pred = C.predict(scores, feats.languages)
    assert pred == ["aa", "cc", "cc", "aa"]
    sums = counts * 3.0
    mm = C.language_scores(feats, counts, sums, method="sae-min-max")
    lo, hi = feats.min_active[0][0][0], feats.max_active[0][0][0]  # f0: 0.5 and 2.0
    assert mm[0, 0] == pytest.approx((9.0 - 3 * lo) / (hi - lo + 1e-6))
    m = C.classification_metrics(["aa", "bb", "cc", "cc"], pred)
    assert m["accuracy"] == 0.5
    # aa: P 1/2 R 1 F 2/3; bb: P 0 R 0 F 0; cc: P 1/2 R 1/2 F 1/2
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0 + 0.5) / 3)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [1, 0, 1]]


def test_classify_on_the_tiny_model_runs_every_classifier(tiny):
    tok_texts = tiny_corpus(seed=4, n=40)
    tok = ST.load_tokenized(tiny, tok_texts, progress=False)
    cfg = M.SAEConfig(d_in=48, num_features=24, kind="topk", k=3, layer=1)
    sae = M.SAE(cfg, {k: np.asarray(v) for k, v in M.init_params(jax.random.key(2), cfg).items()})
    st = LP.feature_stats(
        tiny, sae, ST.sentence_rows(tok, max_len=16), list(tok.languages), batch_size=8, progress=False
    )
    feats = LP.identify(st, example_rate=0.0, token_rate=0.0)

    def first(texts):
        return ["aa"] * len(texts)

    res = C.classify(tiny, sae, feats, {k: v[:10] for k, v in tok_texts.items()}, identifier=first, progress=False)
    assert set(res.metrics) == {"sae-count", "sae-min-max", "identifier"}
    assert res.metrics["identifier"]["accuracy"] == pytest.approx(1 / 3)
    assert all(m["n"] == 30 for m in res.metrics.values())


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_are_named():
    with pytest.raises(M.SAEError, match="kind"):
        M.SAEConfig(d_in=4, num_features=8, kind="jumprelu")
    with pytest.raises(M.SAEError, match="k must be"):
        M.SAEConfig(d_in=4, num_features=8, k=9)
    with pytest.raises(M.SAEError, match="hook_point"):
        M.SAEConfig(d_in=4, num_features=8, k=2, hook_point="mlp.act")
    with pytest.raises(M.SAEError, match="wrong shapes"):
        M.SAE(
            M.SAEConfig(d_in=4, num_features=8, k=2),
            {"W_enc": np.zeros((4, 7)), "b_enc": np.zeros(8), "W_dec": np.zeros((8, 4)), "b_dec": np.zeros(4)},
        )
    with pytest.raises(M.SAEError, match="sae_batch"):
        T.steps_per_batch(1000, T.TrainConfig(sae_batch=256))
    with pytest.raises(M.SAEError, match="TrainConfig"):
        T.TrainConfig(steps=0)
    with pytest.raises(M.SAEError, match="width"):
        T.train_sae(
            ST.ArrayStream(np.zeros((64, 5)), 32),
            M.SAEConfig(d_in=4, num_features=8, k=2),
            T.TrainConfig(steps=1, sae_batch=32),
            progress=False,
        )
    st = handmade_stats()
    with pytest.raises(M.SAEError, match="exceeds num_tokens"):
        LP.FeatureStats(
            st.languages,
            [0],
            np.full(3, 10),
            st.num_examples,
            st.over_zero_token,
            st.over_zero_example,
            st.sum,
            st.max,
            st.min,
        )
    with pytest.raises(M.SAEError, match=r"must be \[K=3, L=1"):
        LP.FeatureStats(
            st.languages,
            [0],
            st.num_tokens,
            st.num_examples,
            st.over_zero_token[:2],
            st.over_zero_example,
            st.sum,
            st.max,
            st.min,
        )
    with pytest.raises(M.SAEError, match="threshold_ratio"):
        LP.identify(st, threshold_ratio=0.0)
    feats = LP.identify(st)
    with pytest.raises(M.SAEError, match=r"counts must be \[N, L=1, F=6\]"):
        C.language_scores(feats, np.zeros((2, 1, 5)))
    with pytest.raises(M.SAEError, match="needs sums"):
        C.language_scores(feats, np.zeros((2, 1, 6)), method="sae-min-max")
    with pytest.raises(M.SAEError, match="method"):
        C.language_scores(feats, np.zeros((2, 1, 6)), method="fasttext")


def test_bad_model_inputs_are_named(tiny, tmp_path):
    tok = ST.load_tokenized(tiny, {k: v[:4] for k, v in tiny_corpus().items()}, progress=False)
    with pytest.raises(M.SAEError, match="out of range"):
        ST.ActivationStream(tiny, tok, layer=9)
    with pytest.raises(M.SAEError, match="hook point"):
        ST.ActivationStream(tiny, tok, layer=1, point="mlp.act")
    stream = ST.ActivationStream(tiny, tok, layer=1, batch_size=2, seq_len=8)
    with pytest.raises(M.SAEError, match="stream gives layer 1"):
        T.train_sae(
            stream, M.SAEConfig(d_in=48, num_features=8, k=2, layer=2), T.TrainConfig(sae_batch=16), progress=False
        )
    with pytest.raises(M.SAEError, match="d_model"):
        E.evaluate(tiny, exact_sae(5, "topk", 1), ST.sentence_rows(tok, max_len=8), progress=False)
    np.savez(tmp_path / "junk.npz", a=np.zeros(3))
    with pytest.raises(M.SAEError, match="jlang.SAE"):
        M.SAE.load(tmp_path / "junk.npz")
    with pytest.raises(M.SAEError, match=r"vectors must be"):
        S.generate_steered(tiny, ["w5"], np.zeros((1, 2, 48)))


# ----------------------------------------------------------------------------- the command line


def test_cli_train_identify_classify_steer_chain(tiny, tmp_path, capsys):
    """`jlang sae train | identify | classify | steer` on the tiny model and a corpus directory with two splits."""
    from jlang.cli import main

    corpus = tmp_path / "corpus"
    for split, seed in (("train", 0), ("heldout", 1)):
        (corpus / split).mkdir(parents=True)
        for lang, texts in zip(("en", "fr", "de"), tiny_corpus(seed=seed, n=30).values()):
            (corpus / split / f"{lang}.txt").write_text("\n".join(texts) + "\n")
    model_dir = tiny.source
    common = ["--model", model_dir, "--corpus", str(corpus), "--languages", "en", "fr", "de", "--no-progress"]
    out = tmp_path / "run"
    assert (
        main(
            [
                "sae",
                "train",
                *common,
                "--out",
                str(out),
                "--layer",
                "1",
                "--features",
                "32",
                "--k",
                "4",
                "--steps",
                "8",
                "--sae-batch",
                "32",
                "--batch-size",
                "2",
                "--seq-len",
                "16",
                "--no-eval",
            ]
        )
        == 0
    )
    assert M.SAE.load(out / "sae.npz").config.num_features == 32
    assert (
        main(
            [
                "sae",
                "identify",
                *common,
                "--sae",
                str(out / "sae.npz"),
                "--out",
                str(out),
                "--example-rate",
                "0",
                "--token-rate",
                "0",
            ]
        )
        == 0
    )
    feats = LP.SAELapeFeatures.load(out / "features.npz")
    assert feats.languages == ["en", "fr", "de"] and sum(feats.counts().values()) > 0
    assert (
        main(
            [
                "sae",
                "classify",
                *common,
                "--sae",
                str(out / "sae.npz"),
                "--features",
                str(out / "features.npz"),
                "--out",
                str(out),
                "--sentences-per-language",
                "5",
            ]
        )
        == 0
    )
    assert (out / "classify.png").is_file()
    target = next(lang for lang, n in feats.counts().items() if n)
    assert (
        main(
            [
                "sae",
                "steer",
                *common,
                "--sae",
                str(out / "sae.npz"),
                "--features",
                str(out / "features.npz"),
                "--target",
                target,
                "--prompt",
                "w5 w6",
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "sae-count" in text and "steered:" in text


# ----------------------------------------------------------------------------- the experiment, on the default model


@pytest.mark.slow
def test_experiment_runs_on_the_default_model(tmp_path):
    """`python experiments/sae_lape.py configs/sae_default.yaml`, shortened, from the repository root."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sets = [
        f"out={tmp_path / 'run'}",
        "train.steps=64",
        "eval.sentences_per_language=4",
        "lape.sentences_per_language=30",
        "classify.sentences_per_language=10",
        "steering.prompts=1",
        "steering.targets=[fr, ja]",
        "steering.multipliers=[2.0]",
        "steering.max_new_tokens=8",
    ]
    cmd = [sys.executable, "experiments/sae_lape.py", "configs/sae_default.yaml"] + [
        a for s in sets for a in ("--set", s)
    ]
    subprocess.run(cmd, cwd=root, check=True, timeout=3600)
    run = tmp_path / "run"
    ev = json.loads((run / "eval.json").read_text())
    assert np.isfinite([ev["nll_clean"], ev["nll_sae"], ev["delta_nll"], ev["ev"]]).all() and ev["tokens"] > 0
    report = (run / "report.md").read_text()
    assert "ΔNLL" in report and "py3langid" in report
    for name in ("sae.npz", "features.npz", "stats.npz", "classify.json", "train.png", "features.png"):
        assert (run / name).is_file(), name
    assert M.SAE.load(run / "sae.npz").config.layer == 9
