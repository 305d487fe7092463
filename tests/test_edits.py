"""jlang.edits: every intervention of the papers as `Edits` data, checked by hand and in the forward."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jlang
from jlang import edits as E
from jlang.io import torchfile
from jlang.masks import MaskShapeError, NeuronMasks, UnknownLanguageError
from jlang.models.decoder import Edits
from jlang.stats import ActivationStats

# ----------------------------------------------------------------------------- hand-made inputs


def small_masks() -> NeuronMasks:
    """3 languages, 2 layers, 4 neurons.

    a: (0,0) (0,1) (1,3)      b: (0,1) (1,2)      c: none
    """
    m = np.zeros((3, 2, 4), bool)
    m[0, 0, [0, 1]] = m[0, 1, 3] = True
    m[1, 0, 1] = m[1, 1, 2] = True
    return NeuronMasks(["a", "b", "c"], m, {"model": "toy"})


def small_stats() -> ActivationStats:
    """tokens a=10 b=20 c=5; sums chosen so that means are simple numbers."""
    mean = np.zeros((3, 2, 4))
    mean[0] = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    mean[1] = [[-1.0, 0.5, 0.0, 2.0], [0.25, 1.0, -2.0, 4.0]]
    mean[2] = [[3.0, 1.5, 1.0, 0.0], [0.75, 0.0, 0.0, -4.0]]
    tokens = np.array([10, 20, 5])
    over_zero = np.zeros((3, 2, 4), np.int64)
    over_zero[0] = [[5, 10, 0, 1], [2, 3, 4, 8]]  # probs a: 0.5 1.0 0 0.1 / 0.2 0.3 0.4 0.8
    return ActivationStats(["a", "b", "c"], tokens, over_zero, sum=mean * tokens[:, None, None])


def _expect(mask, scale, shift):
    mask = np.asarray(mask, bool)
    return (
        mask,
        np.where(mask, np.asarray(scale, np.float32), 1).astype(np.float32),
        np.where(mask, np.asarray(shift, np.float32), 0).astype(np.float32),
    )


def _assert_edits(e: Edits, mask, scale, shift):
    m, s, b = _expect(mask, scale, shift)
    np.testing.assert_array_equal(np.asarray(e.mask), m)
    np.testing.assert_array_equal(np.asarray(e.scale), s)
    np.testing.assert_array_equal(np.asarray(e.shift), b)
    assert np.asarray(e.mask).dtype == bool
    assert np.asarray(e.scale).dtype == np.float32 and np.asarray(e.shift).dtype == np.float32


MASK_A = [[1, 1, 0, 0], [0, 0, 0, 1]]
MASK_B = [[0, 1, 0, 0], [0, 0, 1, 0]]


# ----------------------------------------------------------------------------- constructors by hand


def test_identity_shapes():
    e = E.identity((2, 4))
    _assert_edits(e, np.zeros((2, 4)), 1, 0)
    assert np.asarray(E.identity(small_masks()).mask).shape == (2, 4)


def test_deactivate_by_hand():
    _assert_edits(E.deactivate(small_masks(), "a"), MASK_A, 0, 0)
    _assert_edits(E.deactivate(small_masks(), "a", value=-1.5), MASK_A, 0, -1.5)  # Gurgurov fallbacks
    union = np.logical_or(MASK_A, MASK_B)
    _assert_edits(E.deactivate(small_masks(), ["a", "b"], value=-1.0), union, 0, -1.0)
    _assert_edits(E.deactivate(small_masks(), "c"), np.zeros((2, 4)), 1, 0)  # no neurons: identity
    _assert_edits(E.deactivate(np.array(MASK_B, bool)), MASK_B, 0, 0)  # a bare [L, F] mask


def test_amplify_and_set_by_hand():
    _assert_edits(E.amplify(small_masks(), "b", 2.5), MASK_B, 2.5, 0)
    _assert_edits(E.set_to(small_masks(), "b", 10.0), MASK_B, 0, 10.0)
    values = np.arange(8, dtype=np.float64).reshape(2, 4)
    values[0, 0] = np.nan  # outside b's mask: ignored
    _assert_edits(E.set_to(small_masks(), "b", values), MASK_B, 0, np.nan_to_num(values))


def test_additive_replace_diffmean_by_hand():
    m, s = small_masks(), small_stats()
    mean_a = s.mean[0]
    _assert_edits(E.add(m, "a", s), MASK_A, 1, mean_a)
    _assert_edits(E.add(m, "a", s, alpha=2.0), MASK_A, 1, 2 * mean_a)
    # the earlier definition: activation probability over_zero / n
    probs_a = np.array([[0.5, 1.0, 0.0, 0.1], [0.2, 0.3, 0.4, 0.8]])
    _assert_edits(E.add(m, "a", s, alpha=3.0, definition="probability"), MASK_A, 1, 3 * probs_a)
    _assert_edits(E.replace(m, "a", s), MASK_A, 0, mean_a)
    # diffmean for a at (0,0): 1 - mean(-1, 3) = 0; (0,1): 2 - mean(0.5, 1.5) = 1; (1,3): 8 - mean(4, -4) = 8
    e = E.diffmean(m, "a", s)
    _assert_edits(e, MASK_A, 1, [[0.0, 1.0, 0, 0], [0, 0, 0, 8.0]])
    _assert_edits(E.diffmean(m, "a", s, others=["b"]), MASK_A, 1, [[2.0, 1.5, 0, 0], [0, 0, 0, 4.0]])


def test_set_to_statistic_by_hand():
    m, s = small_masks(), small_stats()
    # per-document means of b: 3 documents (odd) and of a: 4 documents (even: torch's lower median)
    docs_a = np.stack([np.full((2, 4), v) for v in (4.0, 1.0, 3.0, 2.0)])
    docs_b = np.stack([np.full((2, 4), v) for v in (-1.0, 5.0, 0.5)])
    docs_b[:, 1, 2] = [7.0, 8.0, 9.0]
    summ = E.DocumentSummaries.from_document_means({"a": docs_a, "b": docs_b, "c": docs_b})
    np.testing.assert_array_equal(summ.documents, [4, 3, 3])
    _assert_edits(E.set_to_statistic(m, "a", summ, "p_max"), MASK_A, 0, 4.0)
    _assert_edits(E.set_to_statistic(m, "a", summ, "p_median"), MASK_A, 0, 2.0)  # lower median of 1 2 3 4
    _assert_edits(E.set_to_statistic(m, "b", summ, "p_median"), MASK_B, 0, [[0, 0.5, 0, 0], [0, 0, 8.0, 0]])
    _assert_edits(E.set_to_statistic(m, "b", summ, "p_max", target="a"), MASK_B, 0, 4.0)  # b's neurons, a's values
    _assert_edits(E.set_to_statistic(m, "a", s, "mean"), MASK_A, 0, s.mean[0])
    with pytest.raises(E.EditError, match="per-document"):
        E.set_to_statistic(m, "a", s, "p_max")  # ActivationStats has no per-document summaries
    tm = ActivationStats(s.languages, s.tokens, s.over_zero, max=np.full((3, 2, 4), 9.0))
    _assert_edits(E.set_to_statistic(m, "a", tm, "token_max"), MASK_A, 0, 9.0)


def test_document_summaries_from_reference_files(tmp_path):
    """tauimbz/lang-task-neuron's max.pt / median.pt ([langs, L, I] tensors) read without torch."""
    rng = np.random.default_rng(0)
    mx, md = rng.normal(size=(3, 2, 4)).astype(np.float32), rng.normal(size=(3, 2, 4)).astype(np.float32)
    torchfile.save(tmp_path / "max.pt", mx)
    torchfile.save(tmp_path / "median.pt", md)
    summ = E.DocumentSummaries.from_reference_files(tmp_path / "max.pt", tmp_path / "median.pt", ["a", "b", "c"])
    _assert_edits(E.set_to_statistic(small_masks(), "b", summ, "p_median"), MASK_B, 0, md[1])


def test_combine_by_hand():
    m, s = small_masks(), small_stats()
    deact, steer = E.deactivate(m, "b", value=-1.0), E.add(m, "a", s, alpha=2.0)
    # Gurgurov batch_generation.py: zero s's neurons, then += α μ_t; (0,1) is in both masks
    both = E.combine(deact, steer)
    shift = np.where(MASK_A, 2 * s.mean[0], 0) + np.where(MASK_B, -1.0, 0)
    shift[0, 1] = -1.0 + 2 * s.mean[0][0, 1]
    scale = np.where(MASK_B, 0.0, 1.0)
    _assert_edits(both, np.logical_or(MASK_A, MASK_B), scale, shift)
    last = E.combine(deact, steer, overlap="last")
    shift[0, 1] = 2 * s.mean[0][0, 1]
    scale[0, 1] = 1.0
    _assert_edits(last, np.logical_or(MASK_A, MASK_B), scale, shift)
    # a value-setting later edit wins either way
    _assert_edits(
        E.combine(steer, deact),
        np.logical_or(MASK_A, MASK_B),
        np.where(MASK_B, 0, 1),
        np.where(MASK_B, -1.0, np.where(MASK_A, 2 * s.mean[0], 0)),
    )


def test_combine_disjoint_is_exact():
    """For non-overlapping masks, combine keeps each edit's scale and shift bit for bit."""
    rng = np.random.default_rng(1)
    owner = rng.integers(0, 3, (5, 7))  # 0: none, 1: first edit, 2: second edit
    e1 = E.set_to(owner == 1, None, rng.normal(size=(5, 7)))
    e2 = Edits(
        mask=owner == 2,
        scale=rng.normal(size=(5, 7)).astype(np.float32),
        shift=rng.normal(size=(5, 7)).astype(np.float32),
    )
    for overlap in ("compose", "last"):
        c = E.combine(e1, e2, overlap=overlap)
        np.testing.assert_array_equal(c.mask, owner > 0)
        np.testing.assert_array_equal(c.scale, np.where(owner == 1, e1.scale, np.where(owner == 2, e2.scale, 1)))
        np.testing.assert_array_equal(c.shift, np.where(owner == 1, e1.shift, np.where(owner == 2, e2.shift, 0)))


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_say_what_is_wrong():
    m, s = small_masks(), small_stats()
    with pytest.raises(UnknownLanguageError, match=r"'zz'.*\['a', 'b', 'c'\]"):
        E.deactivate(m, "zz")
    with pytest.raises(UnknownLanguageError, match=r"\['a', 'b', 'c'\]"):
        E.deactivate(m)  # which language?
    for bad in (float("nan"), float("inf"), "x"):
        with pytest.raises(E.EditError, match="value"):
            E.deactivate(m, "a", value=bad)
    with pytest.raises(E.EditError, match="needs factor="):
        E.amplify(m, "a")
    with pytest.raises(E.EditError, match="factor must be finite"):
        E.amplify(m, "a", float("inf"))
    with pytest.raises(E.EditError, match="alpha must be finite"):
        E.add(m, "a", s, alpha=float("nan"))
    with pytest.raises(E.EditError, match=r"\[L, F\]"):
        E.set_to(m, "a", np.zeros((3, 4)))
    with pytest.raises(E.EditError, match="non-finite"):
        E.set_to(m, "a", np.full((2, 4), np.nan))
    # statistics of another model / without the language
    other = ActivationStats(["a", "b"], [1, 1], np.zeros((2, 3, 4), np.int64), sum=np.zeros((2, 3, 4)))
    with pytest.raises(E.EditError, match="3 layers x 4 neurons but the mask is 2 x 4"):
        E.add(m, "a", other)
    with pytest.raises(E.EditError, match=r"'c' is not in the statistics, which hold \['a', 'b'\]"):
        E.replace(m, "c", s.select(["a", "b"]))
    with pytest.raises(E.EditError, match="no activation sums"):
        E.add(m, "a", ActivationStats(s.languages, s.tokens, s.over_zero))
    with pytest.raises(E.EditError, match="at least one language besides"):
        E.diffmean(m, "a", s.select(["a"]))
    with pytest.raises(E.EditError, match="unknown statistic"):
        E.set_to_statistic(m, "a", s, "p_mean")
    with pytest.raises(E.EditError, match="one language code"):
        E.add(m, ["a", "b"], s)
    with pytest.raises(E.EditError, match="different shapes"):
        E.combine(E.identity((2, 4)), E.identity((3, 4)))
    with pytest.raises(E.EditError, match="no languages"):
        E.deactivate(np.ones((2, 4), bool), "a")
    with pytest.raises(MaskShapeError, match="does not fit"):
        E.deactivate(m, "a", model=(3, 4))  # a mask of another model
    with pytest.raises(MaskShapeError, match="does not fit"):
        E.check_fits(E.identity((2, 4)), (2, 5))


# ----------------------------------------------------------------------------- in the forward


@pytest.fixture(scope="module")
def tiny(tiny_dirs):
    path, _ = tiny_dirs["llama2"]
    return jlang.load_model(path, progress=False)


def _ids(model, batch=2, seq=9, seed=0):
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, (batch, seq))


def test_identity_reproduces_unedited_logits_exactly(tiny):
    ids = _ids(tiny)
    np.testing.assert_array_equal(tiny.logits(ids, edits=E.identity(tiny)), tiny.logits(ids))


def test_deactivating_a_neuron_equals_zeroing_its_down_row(tiny):
    """a_j = 0 ⇔ the j-th term of down(a ⊙ up) vanishes ⇔ row j of the [L, F, D] down kernel is 0."""
    ids = jnp.asarray(_ids(tiny))
    L, F = tiny.num_layers, tiny.num_neurons
    rng = np.random.default_rng(0)
    mask = np.zeros((L, F), bool)
    mask[1, 17] = True  # one neuron
    mask[rng.random((L, F)) < 0.1] = True  # and ~10% more
    params = dict(tiny.params)
    down = np.array(params["layers.down"])
    down[mask] = 0.0
    zeroed = dict(params, **{"layers.down": jnp.asarray(down)})
    none = E.identity(tiny)  # (one compilation for all three: edits are data)
    ref, _ = tiny._jitted(zeroed, ids, edits=none)
    out, _ = tiny._jitted(tiny.params, ids, edits=E.deactivate(mask, model=tiny))
    unedited, _ = tiny._jitted(tiny.params, ids, edits=none)
    assert np.abs(np.asarray(out) - np.asarray(unedited)).max() > 1e-2  # the edit matters
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)


def test_new_edit_values_reuse_the_compiled_forward(tiny_dirs):
    path, _ = tiny_dirs["qwen2"]
    model = jlang.load_model(path, progress=False)
    ids = _ids(model)
    masks = NeuronMasks(["x", "y"], np.random.default_rng(0).random((2, model.num_layers, model.num_neurons)) < 0.2)
    outs = [
        model.logits(ids, edits=e)
        for e in (
            E.identity(model),
            E.deactivate(masks, "x"),
            Edits.identity(model.num_layers, model.num_neurons),  # jax arrays: the same compilation
            E.deactivate(masks, "y", value=-1.0),
            E.amplify(masks, "x", 3.0),
            E.combine(E.deactivate(masks, "x"), E.set_to(masks, "y", 0.7)),
        )
    ]
    assert model._jitted._cache_size() == 1
    np.testing.assert_array_equal(outs[2], outs[0])
    assert all(np.abs(o - outs[0]).max() > 1e-3 for o in outs[1:2] + outs[3:])


def test_document_means_match_pytorch_hooks(tiny, tiny_dirs):
    """document_means: per-row mean of mlp.act over each document's tokens, independent of padding
    (what tauimbz/lang-task-neuron get_activations.py computes with hooks on act_fn)."""
    import torch

    _, hf = tiny_dirs["llama2"]
    rng = np.random.default_rng(2)
    docs = [rng.integers(0, tiny.config.vocab_size, n).tolist() for n in (3, 7, 5)]
    means = E.document_means(tiny, docs, batch_size=2)
    assert means.shape == (3, tiny.num_layers, tiny.num_neurons)
    seen = {}
    hooks = [
        layer.mlp.act_fn.register_forward_hook(lambda m, i, o, l=l: seen.__setitem__(l, o[0].mean(0).numpy()))
        for l, layer in enumerate(hf.model.layers)
    ]
    try:
        for d, row in zip(docs, means):
            with torch.no_grad():
                hf(torch.tensor([d]))
            np.testing.assert_allclose(row, np.stack([seen[l] for l in range(tiny.num_layers)]), atol=1e-5)
    finally:
        for h in hooks:
            h.remove()


def _misfits(model):
    """Edits made for other models: one layer more (once silently ignored) and three neurons more (once XLA's error)."""
    L, F = model.num_layers, model.num_neurons
    return {"one layer more": E.identity((L + 1, F)), "three neurons more": E.identity((L, F + 3))}


@pytest.mark.parametrize("which", ["one layer more", "three neurons more"])
def test_edits_of_another_model_fail_by_name_everywhere(tiny, which):
    """forward, Model.logits, generation and the evaluations' scorer and lens all refuse misfit edits clearly."""
    from jlang.evals.logit_lens import lens_top_k
    from jlang.models.decoder import AttnEdits, forward
    from jlang.models.generate import generate
    from jlang.models.scoring import Scorer, rows_from_token_lists

    bad = _misfits(tiny)[which]
    ids = _ids(tiny)
    where = r"edits do not fit .*layers x .* MLP neurons: mask"
    with pytest.raises(MaskShapeError, match=where):
        forward(tiny.params, jnp.asarray(ids), tiny.config, edits=bad)
    with pytest.raises(MaskShapeError, match=rf"{where}.*\(expected \[{tiny.num_layers}, {tiny.num_neurons}\]\)"):
        tiny.logits(ids, edits=bad)
    with pytest.raises(MaskShapeError, match=where):
        generate(tiny, [[1, 5, 6]], max_new_tokens=2, edits=bad)
    rows = rows_from_token_lists([[1, 5, 6, 7]], [0], [0])
    with pytest.raises(MaskShapeError, match=where):
        Scorer(tiny, vocab_chunk=64).row_sums(rows, bad, batch_size=1)
    with pytest.raises(MaskShapeError, match=where):
        lens_top_k(tiny, ids, np.ones(ids.shape, bool), k=3, edits=bad)
    c = tiny.config
    attn = AttnEdits.ones(c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim + 1)
    with pytest.raises(MaskShapeError, match=r"attn\.q"):
        tiny.logits(ids, edits=Edits(**{**vars(E.identity(tiny)), "attn": attn}))
