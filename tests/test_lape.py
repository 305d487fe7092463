"""LAPE (RUCAIBox identify.py): hand-worked quirks, and parity with a torch reading of identify.py on real counts."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import shared_fixtures

from jlang.methods import MethodError, lape, lape_entropy, lape_fixed_count, lape_probs
from jlang.methods.common import kthvalue, lowest_k
from jlang.stats import ActivationStats

NJU_LANGS = ["en", "ru", "es", "fr", "de", "zh", "ja", "bn", "th", "sw"]


# -- hand-worked example ----------------------------------------------------------------------------------
#
# Two languages A, B; one layer of 8 neurons; 100 tokens each, so p = count / 100:
#
#   neuron   0     1     2     3     4     5     6     7
#   A       .90   .05   .80   .60   .20   .10   .10   .10
#   B       .00   .00   .80   .20   .60   .10   .10   .10
#
# All 16 p sorted: 0 0 .05 .1 .1 .1 .1 .1 .1 .2 .2 .6 .6 .8 .8 .9.
# filter_rate = bar = 0.6875: k = round(16 · 0.6875) = 11 -> τ = sorted[10] = .2 (kthvalue is 1-indexed;
# an off-by-one sorted[11] = .6 would drop neurons 3 and 4).
# p > τ (strict) somewhere: neurons 0, 2, 3, 4. Neuron 1 has entropy 0 but never exceeds τ -> +inf.
# Entropies: n0 = 0, n3 = n4 = H(.75, .25) = .5623 (a tie), n2 = ln 2.
# top_rate .25 -> round(2) = 2 neurons: n0 and n3 (tie with n4 broken by index).
# Assignment p > .2: n0 -> A; n3 -> A only (B's .2 equals the bar: strict).

A = [90, 5, 80, 60, 20, 10, 10, 10]
B = [0, 0, 80, 20, 60, 10, 10, 10]
RATE = 0.6875


def hand_stats() -> ActivationStats:
    return ActivationStats(["A", "B"], np.array([100, 100]), np.array([[A], [B]]))


def selected(m, lang):
    return np.flatnonzero(m[lang][0]).tolist()


def test_hand_example_threshold_filter_ties_and_strictness():
    m = lape(hand_stats(), top_rate=0.25, filter_rate=RATE, activation_bar_ratio=RATE)
    assert m.meta["tau"] == float(np.float32(20) / np.float32(100))
    assert m.meta["num_selected"] == 2 and m.meta["num_candidates"] == 4
    assert selected(m, "A") == [0, 3]  # not neuron 1 (+inf), and 3 before its tie 4
    assert selected(m, "B") == []  # neuron 3's B prob equals the bar: not assigned


def test_hand_example_multi_language_assignment():
    m = lape(hand_stats(), top_rate=0.5, filter_rate=RATE, activation_bar_ratio=RATE)
    assert selected(m, "A") == [0, 2, 3]
    assert selected(m, "B") == [2, 4]
    assert m.meta["num_multi_language"] == 1 and m.meta["num_unassigned"] == 0


def test_hand_example_round_half_to_even():
    # 8 · 0.3125 = 2.5 rounds to 2 (Python round), as identify.py's round(len * top_rate).
    m = lape(hand_stats(), top_rate=0.3125, filter_rate=RATE, activation_bar_ratio=RATE)
    assert m.meta["num_selected"] == 2 and selected(m, "A") == [0, 3]


def test_hand_example_entropy_values():
    p = lape_probs(hand_stats())
    assert p.dtype == np.float32
    h = lape_entropy(p)[0]
    assert h[0] == 0 and h[1] == 0 and h[3] == h[4]
    np.testing.assert_allclose(h[[2, 3]], [np.log(2), -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))], rtol=1e-6)
    assert lape_entropy(np.zeros((3, 1, 2), np.float32)).tolist() == [[0, 0]]  # never active: NaN -> 0


def test_selection_primitives():
    values = np.array([3.0, 1.0, 2.0, 1.0, np.inf, 1.0])
    assert kthvalue(values, 1) == 1.0 and kthvalue(values, 4) == 2.0
    assert lowest_k(values, 2).tolist() == [1, 3]  # ties by index
    assert lowest_k(values, 5).tolist() == [1, 3, 5, 2, 0]
    assert lowest_k(values, 9).tolist() == [1, 3, 5, 2, 0, 4]
    with pytest.raises(MethodError):
        kthvalue(values, 0)


def test_fixed_count_variant():
    m = lape_fixed_count(hand_stats(), num_per_language=1, filter_rate=RATE, activation_bar_ratio=RATE)
    assert selected(m, "A") == [0] and selected(m, "B") == [4]
    m2 = lape_fixed_count(hand_stats(), num_per_language=2, filter_rate=RATE, activation_bar_ratio=RATE)
    assert selected(m2, "A") == [0, 3] and selected(m2, "B") == [2, 4]
    three = ActivationStats(["A", "B", "C"], np.array([100, 100, 100]), np.array([[A], [B], [[0] * 8]]))
    m3 = lape_fixed_count(three, num_per_language=2, filter_rate=RATE, activation_bar_ratio=RATE)
    assert m3.languages == ["A", "B", "C"] and not m3["C"].any()  # keeps its slot (no index shift)
    assert m3.meta["short_languages"] == {"C": 0}


def test_errors():
    with pytest.raises(MethodError, match="top_rate"):
        lape(hand_stats(), top_rate=0)
    zero = ActivationStats(["A", "B"], np.array([100, 0]), np.zeros((2, 1, 8), int))
    with pytest.raises(MethodError, match=r"\['B'\] have 0 tokens"):
        lape(zero)


# -- real counts: parity with a straightforward torch reading of identify.py ---------------------------


def torch_identify(torch, over_zero_lik, n_k, top_rate=0.01, filter_rate=0.95, activation_bar_ratio=0.95):
    """identify.py's activation(), line by line (over_zero [L, I, K], n [K]) -> set of (lang, layer, neuron)."""
    activation_probs = over_zero_lik / n_k
    normed = activation_probs / activation_probs.sum(dim=-1, keepdim=True)
    normed[torch.isnan(normed)] = 0
    log_probs = torch.where(normed > 0, normed.log(), 0)
    entropy = -torch.sum(normed * log_probs, dim=-1)
    flat = activation_probs.flatten()
    top_prob_value = flat.kthvalue(round(len(flat) * filter_rate)).values.item()
    entropy[(activation_probs > top_prob_value).sum(dim=-1) == 0] = torch.inf
    flat_entropy = entropy.flatten()
    _, index = flat_entropy.topk(round(len(flat_entropy) * top_rate), largest=False)
    row, col = index // entropy.size(1), index % entropy.size(1)
    selected_probs = activation_probs[row, col].transpose(0, 1)
    bar = flat.kthvalue(round(len(flat) * activation_bar_ratio)).values.item()
    lang, idx = torch.where(selected_probs > bar)
    out = {(int(k), int(row[i]), int(col[i])) for k, i in zip(lang, idx)}
    return out, top_prob_value, len(index)


def test_lape_matches_identify_py_on_mistral_counts():
    torch = pytest.importorskip("torch")
    base = shared_fixtures("nju-mistral-mgsm")
    stats = ActivationStats.from_lape_files({l: base / f"act.{l}.pt" for l in NJU_LANGS})
    m = lape(stats)
    n_layers, inter = stats.num_layers, stats.num_neurons
    assert m.meta["num_selected"] == round(0.01 * n_layers * inter) == 4588

    files = [torch.load(base / f"act.{l}.pt", weights_only=True) for l in NJU_LANGS]
    over_zero = torch.stack([f["over_zero"] for f in files], dim=-1)
    n = torch.tensor([f["total_tokens"] for f in files])
    want, tau, count = torch_identify(torch, over_zero, n)
    assert count == 4588
    assert m.meta["tau"] == tau
    got = {tuple(int(x) for x in ijk) for ijk in np.argwhere(m.masks)}
    assert got == want
    assert m.unique_count() == len({(l, j) for _, l, j in want})
    assert m.counts().sum(1).tolist() == [37, 571, 520, 737, 946, 382, 615, 1054, 576, 1057]
