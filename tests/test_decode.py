"""The KV-cache decoder and `generate`, against full recomputation and transformers.

Prompts are longer than the tiny sliding windows (4 or 5) and generation runs
past them, so a cache that forgets the window, or slides it wrongly, changes
the tokens.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlang
from jlang.models import generate as gen
from jlang.models.decoder import Edits, KVCache, forward, forward_cached
from jlang.models.generate import generate, greedy_reference

torch = pytest.importorskip("torch")

PROMPTS = ["w5 w9 w11 w4 w7 w8 w9 w10 w11", "w100 w7", "w3 w4 w5 w6"]  # 9, 2, 4 tokens
N = 10  # new tokens; tests share PROMPTS and N so they share compiled programs


@pytest.fixture(scope="module")
def load(tiny_dirs):
    """name -> jlang Model, loaded once per module."""
    return functools.cache(lambda name: jlang.load_model(tiny_dirs[name][0], progress=False))


@pytest.mark.parametrize("name", ["llama2", "mistral", "gemma2", "gemma3"])
def test_cached_greedy_matches_full_recomputation(load, name):
    model = load(name)
    assert generate(model, PROMPTS, max_new_tokens=N) == greedy_reference(model, PROMPTS, max_new_tokens=N)


@pytest.mark.parametrize("name", ["llama2", "gemma3"])
def test_matches_transformers_generate_with_repetition_penalty(load, tiny_dirs, name):
    model, torch_model = load(name), tiny_dirs[name][1]
    ours = generate(model, PROMPTS, max_new_tokens=N, repetition_penalty=1.1)
    for prompt, text in zip(PROMPTS, ours):
        ids = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
        ref = torch_model.generate(ids, max_new_tokens=N, do_sample=False, repetition_penalty=1.1, pad_token_id=0)
        assert text == model.tokenizer.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)


def test_batched_equals_one_by_one(load):
    model = load("gemma3")
    one_by_one = [generate(model, [p], max_new_tokens=N, repetition_penalty=1.1)[0] for p in PROMPTS]
    assert generate(model, PROMPTS, max_new_tokens=N, repetition_penalty=1.1) == one_by_one
    assert generate(model, PROMPTS, max_new_tokens=N, repetition_penalty=1.1, batch_size=2) == one_by_one


# ----------------------------------------------------------------------------- the cached forward itself


def _act_probe(hooks, valid):
    return hooks["mlp.act"]


_cached = jax.jit(forward_cached, static_argnames=("cfg", "probe", "output"))
_full = jax.jit(forward, static_argnames=("cfg", "probe", "output"))


def _prefill_and_step(model, ids, n_prompt, edits, where_prompt, where_new, params=None):
    """Cached prefill of `ids[:, :n_prompt]` (left-padded by 3) then one decode step of
    `ids[:, n_prompt]` -> (logits, acts) of both calls."""
    params = model.params if params is None else params
    b = ids.shape[0]
    pad = 3
    prompt = jnp.concatenate([jnp.zeros((b, pad), jnp.int32), ids[:, :n_prompt]], axis=1)
    valid = jnp.arange(pad + n_prompt)[None, :].repeat(b, 0) >= pad
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    cache = KVCache.empty(model.config, b, n_prompt + 4)
    kw = dict(cfg=model.config, probe=_act_probe, edits=edits)
    logits1, acts1, cache = _cached(
        params, prompt, cache=cache, positions=positions, valid=valid, edit_where=valid & where_prompt, **kw
    )
    step_pos = jnp.full((b, 1), n_prompt)
    logits2, acts2, cache = _cached(
        params,
        ids[:, n_prompt : n_prompt + 1],
        cache=cache,
        positions=step_pos,
        edit_where=jnp.full((b, 1), where_new),
        **kw,
    )
    return (logits1[:, pad:], logits2[:, 0]), (acts1[:, :, pad:], acts2[:, :, 0])


def _random_edit(model, seed=0, value=7.0):
    rng = np.random.default_rng(seed)
    mask = rng.random((model.num_layers, model.num_neurons)) < 0.3
    shape = mask.shape
    return Edits(jnp.asarray(mask), jnp.zeros(shape, jnp.float32), jnp.full(shape, value, jnp.float32))


@pytest.mark.parametrize("scope", ["prompt", "generated"])
def test_edit_scopes_on_the_cached_path(load, scope):
    model = load("gemma3")  # local and global layers
    ids = jnp.asarray(np.random.default_rng(1).integers(4, model.config.vocab_size, (2, 10)), jnp.int32)
    n = 9  # prompt tokens; the 10th is the decoded one
    edit = _random_edit(model)
    on_prompt, on_new = scope == "prompt", scope == "generated"
    (pre, step), (act_pre, act_step) = _prefill_and_step(model, ids, n, edit, on_prompt, on_new)

    # the oracle: a full forward over prompt + token with the same per-token edit_where
    where = jnp.concatenate([jnp.full((2, n), on_prompt), jnp.full((2, 1), on_new)], axis=1)
    full, _ = _full(model.params, ids, cfg=model.config, edits=edit, edit_where=where)
    np.testing.assert_allclose(pre, full[:, :n], atol=2e-5)
    np.testing.assert_allclose(step, full[:, n], atol=2e-5)

    # the edit sets masked neurons to 7 exactly where it is in scope, and nowhere else
    mask = np.asarray(edit.mask)[:, None, None, :]
    assert np.all((np.asarray(act_pre) == 7.0)[np.broadcast_to(mask, act_pre.shape)] == on_prompt)
    assert np.all((np.asarray(act_step) == 7.0)[np.broadcast_to(mask[:, :, 0], act_step.shape)] == on_new)

    unedited, _ = _full(model.params, ids, cfg=model.config)
    prompt_changed = not np.allclose(pre, unedited[:, :n], atol=1e-4)
    assert prompt_changed == on_prompt  # "generated" leaves the prefill exactly alone
    assert not np.allclose(step, unedited[:, n], atol=1e-4)  # either scope reaches the new token's logits


def _add_at_layer_1(point, value, layer, args):
    """A splice: `args["vector"][row]` added to the residual after layer 1 on the tokens `args["where"]` marks."""
    if point != "resid.post":
        return value
    on = (layer == 1) & args["where"][..., None]
    return value + jnp.where(on, args["vector"][:, None, :], 0.0).astype(value.dtype)


@pytest.mark.parametrize("scope", gen.SCOPES)
def test_splice_scopes_match_full_recomputation(load, scope):
    """`generate`'s splice, its per-prompt arguments cut into sorted batches, against a fixed-buffer greedy oracle."""
    model, width = load("llama2"), 32
    vectors = 3 * np.random.default_rng(4).normal(size=(len(PROMPTS), model.config.d_model)).astype(np.float32)
    args = {"vector": vectors}
    ours = generate(model, PROMPTS, max_new_tokens=N, splice=_add_at_layer_1, splice_args=args, splice_scope=scope)
    assert ours == generate(
        model, PROMPTS, max_new_tokens=N, splice=_add_at_layer_1, splice_args=args, splice_scope=scope, batch_size=2
    )
    for prompt, vector, text in zip(PROMPTS, vectors, ours):
        ids = model.tokenizer(prompt)["input_ids"]
        n, buf, pos = len(ids), np.zeros((1, width), np.int32), np.arange(width)
        buf[0, : len(ids)] = ids
        where = {"all": pos >= 0, "prompt": pos < n, "generated": pos >= n, "last": pos == n - 1}[scope]
        splice_args = {"vector": jnp.asarray(vector[None]), "where": jnp.asarray(where[None])}
        for i in range(n, n + N):
            logits, _ = model.forward(jnp.asarray(buf), splice=_add_at_layer_1, splice_args=splice_args)
            buf[0, i] = int(np.argmax(np.asarray(logits)[0, i - 1]))
        new = list(buf[0, n : n + N])
        new = new[: new.index(2)] if 2 in new else new  # EOS
        assert text == model.tokenizer.decode(new, skip_special_tokens=True)
    assert ours != generate(model, PROMPTS, max_new_tokens=N)  # the splice does change the text


def test_identity_edits_reproduce_unedited_logits_exactly(load):
    model = load("gemma3")
    ids = jnp.asarray(np.random.default_rng(2).integers(4, model.config.vocab_size, (2, 10)), jnp.int32)
    shape = (model.num_layers, model.num_neurons)
    identity = Edits(jnp.ones(shape, bool), jnp.ones(shape, jnp.float32), jnp.zeros(shape, jnp.float32))
    (pre_e, step_e), _ = _prefill_and_step(model, ids, 9, identity, True, True)
    (pre, step), _ = _prefill_and_step(model, ids, 9, None, True, True)
    np.testing.assert_array_equal(np.asarray(pre_e), np.asarray(pre))
    np.testing.assert_array_equal(np.asarray(step_e), np.asarray(step))


@pytest.mark.parametrize("name", ["llama2", "gemma3"])
def test_per_layer_views_equal_the_stacked_parameters(load, name):
    """`layer_views` (what generation runs on one CPU device) alias the stacked weights and give
    the scanned forward's logits, probes and cache, with edits, left padding and a decode step."""
    from jlang.models.model import layer_views

    model = load(name)
    views = layer_views(model.params)
    assert views is not None, "one CPU device: the views must be zero-copy aliases"
    stacked = np.asarray(model.params["layers.gate"])
    assert [v.unsafe_buffer_pointer() for v in views["layers.gate"]] == [
        stacked[i].ctypes.data for i in range(len(stacked))
    ]
    assert model.unstacked_params() is model.unstacked_params()  # cached
    ids = jnp.asarray(np.random.default_rng(3).integers(4, model.config.vocab_size, (2, 10)), jnp.int32)
    edit = _random_edit(model)
    (pre, step), (act_pre, act_step) = _prefill_and_step(model, ids, 9, edit, True, True)
    (pre_v, step_v), (act_pre_v, act_step_v) = _prefill_and_step(model, ids, 9, edit, True, True, params=views)
    for a, b in [(pre, pre_v), (step, step_v), (act_pre, act_pre_v), (act_step, act_step_v)]:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_views_are_dropped_once_the_weights_are_deleted(tiny_dirs):
    model = jlang.load_model(tiny_dirs["llama2"][0], progress=False)
    assert isinstance(model.unstacked_params()["layers.q"], tuple)
    model.params["layers.q"].delete()  # what donating the weights (fine-tuning) does to them
    assert not isinstance(model.unstacked_params()["layers.q"], tuple)
    with pytest.raises(RuntimeError, match="deleted"):
        model.forward(jnp.ones((1, 4), jnp.int32))


def test_no_views_on_a_mesh(tiny_dirs):
    from jlang.models.model import layer_views

    if jax.device_count() < 2:
        pytest.skip("needs several (fake) devices")
    mesh = jlang.parallel.make_mesh(data=1, model=jax.device_count())
    model = jlang.load_model(tiny_dirs["llama2"][0], mesh=mesh, progress=False)
    assert layer_views(model.params) is None and model.unstacked_params() is not None


def test_changing_edits_scope_and_penalty_does_not_recompile(load):
    model = load("llama2")
    generate(model, PROMPTS, max_new_tokens=N, edits=_random_edit(model, 0), edit_scope="all")
    sizes = gen.prefill._cache_size(), gen.decode._cache_size()
    texts = set()
    for seed, scope, penalty in [(1, "prompt", 1.0), (2, "generated", 1.1), (3, "all", 1.3)]:
        edit = _random_edit(model, seed, value=float(seed))
        texts.add(
            tuple(generate(model, PROMPTS, max_new_tokens=N, edits=edit, edit_scope=scope, repetition_penalty=penalty))
        )
    assert (gen.prefill._cache_size(), gen.decode._cache_size()) == sizes
    assert len(texts) == 3  # the edits did change the text


# ----------------------------------------------------------------------------- generation features


def test_stop_strings_cut_the_text(load):
    model = load("llama2")
    full = generate(model, PROMPTS, max_new_tokens=N)
    stop = full[0].split()[3]  # a word that occurs in the first continuation
    cut = generate(model, PROMPTS, max_new_tokens=N, stop=[" " + stop, "never-there"], chunk=4)
    for text, ref in zip(cut, full):
        i = ref.find(" " + stop)
        assert text == (ref if i < 0 else ref[:i])
    assert cut[0] != full[0]


def test_eos_ends_a_sequence(load):
    model = load("llama2")
    full = generate(model, PROMPTS, max_new_tokens=N)
    eos_word = full[0].split()[4]
    model.hf_config["eos_token_id"] = [2, model.tokenizer.convert_tokens_to_ids(eos_word)]
    try:
        out = generate(model, PROMPTS, max_new_tokens=N)
    finally:
        model.hf_config["eos_token_id"] = 2
    for text, ref in zip(out, full):
        words = ref.split()
        assert text == " ".join(words[: words.index(eos_word)] if eos_word in words else words)
    assert out[0] != full[0]


def test_sampling_is_seeded_and_filters_reduce_to_greedy(load):
    model = load("llama2")
    greedy = generate(model, PROMPTS, max_new_tokens=N)
    assert generate(model, PROMPTS, max_new_tokens=N, temperature=1.0, top_p=1e-6, seed=5) == greedy
    assert generate(model, PROMPTS, max_new_tokens=N, temperature=0.7, top_k=1, seed=5) == greedy
    a = generate(model, PROMPTS, max_new_tokens=N, temperature=1.5, top_p=0.95, seed=1)
    assert a == generate(model, PROMPTS, max_new_tokens=N, temperature=1.5, top_p=0.95, seed=1)
    assert a != generate(model, PROMPTS, max_new_tokens=N, temperature=1.5, top_p=0.95, seed=2)


def test_generate_under_a_mesh_matches_one_device(load):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    model = load("gemma3")
    sharded = model.with_mesh(jlang.parallel.make_mesh(data=2, model=4))
    expected = generate(model, PROMPTS, max_new_tokens=N, repetition_penalty=1.1)
    assert generate(sharded, PROMPTS, max_new_tokens=N, repetition_penalty=1.1) == expected  # 3 rows pad to 4


def test_bad_arguments_are_named(load):
    model = load("llama2")
    with pytest.raises(ValueError, match="edit_scope"):
        generate(model, PROMPTS, edit_scope="decode")
    with pytest.raises(TypeError, match=r"\[prompt\]"):
        generate(model, "w5 w6")
    with pytest.raises(ValueError, match="neurons"):
        generate(model, PROMPTS, edits=Edits.identity(model.num_layers, 7))


def test_cli_generate(load, tiny_dirs, tmp_path, capsys):
    import argparse
    import json

    from jlang.cli.generate import add_generate_parser
    from jlang.masks import NeuronMasks

    model = load("llama2")
    masks = NeuronMasks(["xx", "yy"], np.stack([np.asarray(_random_edit(model, 4).mask)] * 2))
    masks.save(tmp_path / "masks.npz")
    parser = argparse.ArgumentParser()
    add_generate_parser(parser.add_subparsers())
    argv = ["generate", "--model", str(tiny_dirs["llama2"][0]), "--max-new-tokens", str(N), "--json"]
    argv += [x for p in PROMPTS for x in ("--prompt", p)] + ["--stop", r"\nQ:", "--masks", str(tmp_path / "masks.npz")]
    args = parser.parse_args(argv + ["--deactivate", "xx", "--repetition-penalty", "1.1"])
    assert args.stop == [r"\nQ:"] and args.func(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    edits = Edits(jnp.asarray(masks["xx"]), jnp.zeros(masks.masks.shape[1:]), jnp.zeros(masks.masks.shape[1:]))
    expected = generate(model, PROMPTS, max_new_tokens=N, repetition_penalty=1.1, edits=edits, stop=["\nQ:"])
    assert [r["prompt"] for r in rows] == PROMPTS and [r["continuation"] for r in rows] == expected
    assert expected != generate(model, PROMPTS, max_new_tokens=N, repetition_penalty=1.1)
