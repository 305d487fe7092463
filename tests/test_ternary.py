"""Ternary neurons (NJUNLP identify.py + autosweep.py): exact reproduction of the published Mistral mask."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import shared_fixtures

from jlang.masks import NeuronMasks
from jlang.methods import MethodError, ternary, ternary_probs, ternary_scores, ternary_terms
from jlang.methods.ternary import norm_max
from jlang.stats import ActivationStats

NJU_LANGS = ["en", "ru", "es", "fr", "de", "zh", "ja", "bn", "th", "sw"]


@pytest.fixture(scope="module")
def mgsm():
    base = shared_fixtures("nju-mistral-mgsm")
    full = ActivationStats.from_lape_files({l: base / f"act.{l}.pt" for l in NJU_LANGS})
    prompt = ActivationStats.from_lape_files({l: base / f"pre.{l}.pt" for l in NJU_LANGS})
    published = NeuronMasks.from_lape_pt(base / "mask.pth", NJU_LANGS, num_neurons=14336)
    return full, prompt, published


# -- the published mask --------------------------------------------------------------------------------------

APPEAR = {1: 1866, 2: 617, 3: 310, 4: 153, 5: 127, 6: 59, 7: 40, 8: 27, 9: 20}


def test_fixed_lambda_reproduces_mask_pth_exactly(mgsm):
    full, prompt, published = mgsm
    m = ternary(full, prompt_stats=prompt, top_rate=0.01, lam=0.109375)
    assert m.languages == published.languages and m.shape == published.shape == (10, 32, 14336)
    assert np.array_equal(m.masks, published.masks)
    assert m.meta["appear"] == [0] + [APPEAR[c] for c in range(1, 10)] + [0]
    assert m.appear() == m.meta["appear"] == published.appear()
    assert m.meta["num_selected"] == 4588 and m.unique_count() == 3219
    assert m.meta["selected_unassigned"] == 4588 - 3219
    assert m.meta["num_general"] == 0 and m.meta["num_specific"] == 1866
    assert dict(zip(NJU_LANGS, m.counts().sum(1).tolist())) == {
        "en": 142,
        "ru": 556,
        "es": 523,
        "fr": 821,
        "de": 941,
        "zh": 412,
        "ja": 676,
        "bn": 948,
        "th": 622,
        "sw": 666,
    }
    assert m.meta["tokens"]["en"] == 583_261 - 263_330  # response tokens


def test_autosweep_finds_the_published_lambda(mgsm):
    full, prompt, published = mgsm
    m = ternary(full, prompt_stats=prompt, top_rate=0.01, lam="auto")
    assert m.meta["lambda"] == 0.109375
    assert np.array_equal(m.masks, published.masks)
    trace = m.meta["autosweep"]
    assert [t["lambda"] for t in trace[:3]] == [0.0, 0.2, 0.1] and len(trace) == 2 + 8
    assert all((t["general"] == 0) == (t["lambda"] <= 0.109375) for t in trace)


def test_lambda_zero_and_general_neurons(mgsm):
    full, prompt, _ = mgsm
    m0 = ternary(full, prompt_stats=prompt, lam=0.0)
    assert m0.unique_count() == 564  # methods.md §3.3: "With λ=0: only 564 unique neurons"
    big = ternary(full, prompt_stats=prompt, lam=0.2)
    assert big.meta["num_general"] == big.meta["appear"][10] == int(big.general().sum()) > 0


def test_presubtracted_stats_give_the_same_mask(mgsm):
    full, prompt, published = mgsm
    m = ternary(full.subtract(prompt), lam=0.109375)
    assert np.array_equal(m.masks, published.masks) and m.meta["response_only"]


# -- formulas on small arrays ----------------------------------------------------------------------------------


def test_norm_max_and_uniform_entropy():
    assert norm_max(10) == sum(1 / k for k in range(1, 11)) / 10
    assert norm_max(1) == 1.0
    p = np.zeros((4, 1, 2), np.float32)
    p[0, 0, 1] = 0.5  # neuron 1: a single language -> entropy ~0
    h, mx = ternary_terms(p)
    assert h[0] == pytest.approx(1.0, abs=1e-6)  # all-zero neuron -> uniform distribution
    assert h[1] == pytest.approx(0.0, abs=1e-9) and mx.tolist() == [0.0, 0.5]
    s = ternary_scores(h, mx, 0.1, 4)
    assert s.dtype == np.float32
    assert s[1] == np.float32(h[1] - 0.5 * 0.1 / norm_max(4))


def test_response_probs_clamp_and_token_floor():
    full = ActivationStats(["a", "b"], np.array([10, 4]), np.array([[[6, 1]], [[2, 0]]]))
    prompt = ActivationStats(["a", "b"], np.array([5, 4]), np.array([[[1, 3]], [[0, 0]]]))
    p = ternary_probs(full, prompt)
    assert p.dtype == np.float32
    np.testing.assert_array_equal(p, np.array([[[1.0, 0.0]], [[2.0, 0.0]]], np.float32))  # b: tokens 0 -> /1


def torch_identify(torch, full, prompt, top_rate, lam, bar=0.95):
    """NJUNLP Neuron_Prob + ActivationAnalyzer.run, line by line (per-neuron loop)."""
    k = len(full.languages)
    _, n_layers, n_neurons = full.shape
    act = torch.zeros((n_layers, n_neurons, k), dtype=torch.float32)
    for i in range(k):
        d_tok = max(int(full.tokens[i]) - int(prompt.tokens[i]), 1)
        d_oz = (torch.from_numpy(full.over_zero[i]) - torch.from_numpy(prompt.over_zero[i])).clamp_min(0)
        act[:, :, i] = d_oz.to(torch.float32) / float(d_tok)
    entropy = torch.zeros((n_layers, n_neurons))
    nmax = sum(1 / j for j in range(1, k + 1)) / k
    for l in range(n_layers):
        for n in range(n_neurons):
            vec = act[l, n, :]
            s = vec.sum()
            probs = torch.full_like(vec, 1.0 / vec.numel()) if s <= 0 else vec / s
            q = probs.clamp_min(1e-12)
            q = q / q.sum()
            e = float(-(q * (q + 1e-30).log()).sum().item()) / np.log(k)
            entropy[l, n] = e - vec.max().item() * float(lam) / nmax
    count = round(entropy.numel() * float(top_rate))
    _, flat_idx = entropy.flatten().topk(count, largest=False)
    thr = act.flatten().kthvalue(round(act.numel() * bar)).values.item()
    out = set()
    for i in flat_idx.tolist():
        l, n = divmod(i, n_neurons)
        out |= {(lid, l, n) for lid in range(k) if act[l, n, lid] > thr}
    return out


@pytest.mark.parametrize("lam", [0.0, 0.05, 0.3])
def test_matches_torch_loop_on_random_counts(lam):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    k, n_layers, n_neurons = 5, 3, 40
    tokens = rng.integers(500, 1000, size=k)
    full_oz = rng.binomial(tokens[:, None, None], rng.beta(0.3, 1.5, size=(k, n_layers, n_neurons)))
    full_oz[:, 0, :3] = 0  # never active
    prompt_tok = tokens // 3
    prompt_oz = np.minimum(rng.binomial(prompt_tok[:, None, None], 0.3, size=full_oz.shape), full_oz + 2)
    full = ActivationStats([f"l{i}" for i in range(k)], tokens, full_oz)
    prompt = ActivationStats(full.languages, prompt_tok, prompt_oz)
    m = ternary(full, prompt_stats=prompt, top_rate=0.1, lam=lam)
    got = {tuple(int(x) for x in ijk) for ijk in np.argwhere(m.masks)}
    assert got == torch_identify(torch, full, prompt, 0.1, lam)


def _sweep_stats(general_always: bool) -> ActivationStats:
    if general_always:  # neuron 0 is above the bar in both languages; top_rate 1 selects it whatever λ
        return ActivationStats(["A", "B"], np.array([100, 100]), np.array([[[90, 90, 10, 10]], [[90, 10, 10, 10]]]))
    return ActivationStats(["A", "B"], np.array([100, 100]), np.array([[[90, 0, 10, 10]], [[0, 90, 10, 10]]]))


def test_autosweep_without_solution_raises():
    with pytest.raises(MethodError, match="no λ in"):
        ternary(_sweep_stats(True), top_rate=1.0, lam="auto", activation_bar_ratio=0.5)


def test_autosweep_quirk_passing_hi_is_replaced_by_last_midpoint():
    # As in autosweep.py: when hi=0.2 already passes, bisection still runs and returns the last passing mid.
    m = ternary(_sweep_stats(False), top_rate=0.5, lam="auto", activation_bar_ratio=0.5)
    assert m.meta["autosweep"][1] == {"lambda": 0.2, "general": 0}
    assert m.meta["lambda"] == pytest.approx(0.2 - 0.2 / 2**8)


def test_parameter_errors():
    s = _sweep_stats(False)
    with pytest.raises(MethodError, match="lam must be"):
        ternary(s, lam="sweep")
    with pytest.raises(MethodError, match="lam must be"):
        ternary(s, lam=-1)
    with pytest.raises(MethodError, match="top_rate"):
        ternary(s, top_rate=2)
