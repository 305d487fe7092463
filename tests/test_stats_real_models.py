"""The statistics pass on the two packaged real models against PyTorch hooks (slow).

For each packaged model ("smollm2", "default"), real multilingual text (en, fr, ru,
zh, id; hand-written paragraphs below) is tokenised, packed into 64-token rows
(LAPE packs documents into fixed rows with no padding; here only each language's
last row is right-padded, with `valid=False`), and counted twice:

* by jlang: `jlang.stats.collect.run_stats` (JAX, float32);
* by transformers loading the same GGUF in float32, with forward hooks on every
  layer's `mlp.act_fn` (the hook output is `act(gate_proj x)`, the tensor LAPE
  counts, methods.md §1.1), counting `> 0` per language on valid tokens only.

Token counts must be identical. `over_zero` may differ only where an activation
sits next to zero and float rounding flips its sign (fraction of all K·L·F counts
≤ 1e-3). Sums agree to a loose tolerance. LAPE masks computed from either set of
counts must be nearly the same (Jaccard ≥ 0.99 at top_rate 0.01 and 0.05).
Figures are printed (run with `-s`) and stored with `record_property`.

Run: python -m pytest tests/test_stats_real_models.py -m slow -q -s
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import jlang
from jlang.methods import lape
from jlang.stats import ActivationStats
from jlang.stats.collect import run_stats

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

ROW = 64  # tokens per row: short rows keep both forwards cheap on 2 cores
BATCH_ROWS = 8
TOKENS_PER_LANGUAGE = 1000  # about; each language's stream is cut a few tokens apart so last rows differ
MAX_OVER_ZERO_FRACTION = 1e-3
MIN_JACCARD = 0.99

TEXTS = {
    "en": [
        "The village sits at the foot of a green hill, where a narrow river turns slowly towards the sea.",
        "Every morning the baker opens his shop before sunrise, and the smell of fresh bread fills the empty street.",
        "Children walk to school in small groups, talking loudly about football, homework and the weekend.",
        "In the afternoon the old men play cards under the trees in the square and argue about the weather.",
        "The library was built a hundred years ago with money collected by the farmers of the valley.",
        "When the rain comes in autumn, the roads become muddy and the buses often arrive late.",
        "My grandmother still writes long letters by hand, because she says that a phone call is too quick.",
        "Scientists have measured the temperature of the lake every summer for more than forty years.",
        "The new bridge will connect the two halves of the town and shorten the journey to the hospital.",
        "At night the sky is so dark that you can see thousands of stars and sometimes the Milky Way.",
        "Most people here speak two languages, and many of them understand a third one as well.",
        "The museum is closed on Mondays, but on the first Sunday of each month the entrance is free.",
    ],
    "fr": [
        "Le village se trouve au pied d'une colline verte, où une petite rivière tourne lentement vers la mer.",
        (
            "Chaque matin, le boulanger ouvre sa boutique avant le lever du soleil, "
            "et l'odeur du pain frais remplit la rue."
        ),
        "Les enfants vont à l'école en petits groupes en parlant fort du football, des devoirs et du week-end.",
        "L'après-midi, les anciens jouent aux cartes sous les arbres de la place et se disputent à propos du temps.",
        "La bibliothèque a été construite il y a cent ans grâce à l'argent réuni par les paysans de la vallée.",
        "Quand la pluie arrive en automne, les routes deviennent boueuses et les autobus sont souvent en retard.",
        (
            "Ma grand-mère écrit encore de longues lettres à la main, "
            "car elle trouve qu'un appel téléphonique est trop rapide."
        ),
        "Des chercheurs mesurent la température du lac chaque été depuis plus de quarante ans.",
        "Le nouveau pont reliera les deux moitiés de la ville et raccourcira le trajet jusqu'à l'hôpital.",
        "La nuit, le ciel est si sombre qu'on peut voir des milliers d'étoiles et parfois la Voie lactée.",
        "La plupart des habitants parlent deux langues, et beaucoup en comprennent aussi une troisième.",
        "Le musée est fermé le lundi, mais l'entrée est gratuite le premier dimanche de chaque mois.",
    ],
    "ru": [
        "Деревня стоит у подножия зелёного холма, где узкая река медленно поворачивает к морю.",
        "Каждое утро пекарь открывает свою лавку ещё до восхода солнца, и запах свежего хлеба наполняет пустую улицу.",
        "Дети идут в школу небольшими группами и громко обсуждают футбол, домашние задания и выходные.",
        "После обеда старики играют в карты под деревьями на площади и спорят о погоде.",
        "Библиотеку построили сто лет назад на деньги, которые собрали крестьяне из долины.",
        "Когда осенью начинаются дожди, дороги становятся грязными, и автобусы часто опаздывают.",
        "Моя бабушка до сих пор пишет длинные письма от руки, потому что считает телефонный звонок слишком быстрым.",
        "Учёные измеряют температуру озера каждое лето уже больше сорока лет.",
        "Новый мост соединит две половины города и сократит дорогу до больницы.",
        "Ночью небо такое тёмное, что можно увидеть тысячи звёзд, а иногда и Млечный Путь.",
        "Большинство жителей говорят на двух языках, а многие понимают ещё и третий.",
        "По понедельникам музей закрыт, но в первое воскресенье каждого месяца вход бесплатный.",
    ],
    "zh": [
        "这个村庄坐落在一座绿色小山的脚下，一条狭窄的河流在那里慢慢地流向大海。",
        "每天早上，面包师在日出之前就打开店门，新鲜面包的香味飘满了空荡荡的街道。",
        "孩子们三五成群地走路去上学，大声地谈论着足球、作业和周末的计划。",
        "下午，老人们坐在广场的树荫下打牌，一边打一边争论天气的好坏。",
        "这座图书馆是一百年前用山谷里的农民们凑起来的钱建成的。",
        "秋天下雨的时候，道路变得泥泞不堪，公交车也经常晚点。",
        "我的奶奶现在还用手写很长的信，因为她觉得打电话太快了。",
        "四十多年来，科学家们每年夏天都会测量湖水的温度。",
        "新建的大桥将把城镇的两半连接起来，并缩短去医院的路程。",
        "夜里的天空非常黑，可以看到成千上万颗星星，有时还能看到银河。",
        "这里的大多数人会说两种语言，其中很多人还能听懂第三种语言。",
        "博物馆每周一闭馆，但每个月的第一个星期天可以免费参观。",
    ],
    "id": [
        "Desa itu terletak di kaki sebuah bukit hijau, tempat sungai kecil berbelok perlahan menuju laut.",
        "Setiap pagi tukang roti membuka tokonya sebelum matahari terbit, dan bau roti segar memenuhi jalan yang sepi.",
        (
            "Anak-anak berjalan ke sekolah dalam kelompok kecil sambil berbicara keras tentang sepak bola, "
            "pekerjaan rumah, dan akhir pekan."
        ),
        "Pada sore hari para orang tua bermain kartu di bawah pohon di alun-alun dan berdebat tentang cuaca.",
        "Perpustakaan itu dibangun seratus tahun yang lalu dengan uang yang dikumpulkan oleh para petani di lembah.",
        "Ketika hujan datang pada musim gugur, jalan menjadi berlumpur dan bus sering terlambat.",
        "Nenek saya masih menulis surat panjang dengan tangan, karena menurutnya menelepon terlalu cepat.",
        "Para ilmuwan telah mengukur suhu danau setiap musim panas selama lebih dari empat puluh tahun.",
        "Jembatan baru itu akan menghubungkan kedua bagian kota dan mempersingkat perjalanan ke rumah sakit.",
        "Pada malam hari langit begitu gelap sehingga kita bisa melihat ribuan bintang dan kadang-kadang Bima Sakti.",
        "Kebanyakan orang di sini berbicara dua bahasa, dan banyak dari mereka juga memahami bahasa ketiga.",
        "Museum tutup pada hari Senin, tetapi pada hari Minggu pertama setiap bulan masuknya gratis.",
    ],
}
LANGUAGES = list(TEXTS)


def _language_stream(tokenizer, lang: str, target: int, seed: int) -> list[int]:
    """About `target` token ids of real `lang` text: documents (the paragraph in shuffled
    sentence orders, tokenised with the tokenizer's special tokens) packed back to back."""
    rng = np.random.default_rng(seed)
    sep = "" if lang == "zh" else " "
    ids: list[int] = []
    while len(ids) < target:
        order = rng.permutation(len(TEXTS[lang]))
        ids += tokenizer(sep.join(TEXTS[lang][i] for i in order))["input_ids"]
    return ids[:target]


def build_batches(tokenizer) -> list[dict[str, np.ndarray]]:
    """Rows of `ROW` tokens per language (the last one right-padded, valid=False), grouped
    `BATCH_ROWS` rows per batch with languages mixed within batches."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = []  # (ids, valid, lang)
    for k, lang in enumerate(LANGUAGES):
        stream = _language_stream(tokenizer, lang, TOKENS_PER_LANGUAGE + 13 * k, seed=k)
        for start in range(0, len(stream), ROW):
            chunk = stream[start : start + ROW]
            ids = np.full(ROW, pad_id, np.int64)
            ids[: len(chunk)] = chunk
            valid = np.zeros(ROW, bool)
            valid[: len(chunk)] = True
            rows.append((ids, valid, k))
    order = np.random.default_rng(0).permutation(len(rows))
    rows = [rows[i] for i in order]
    batches = []
    for start in range(0, len(rows), BATCH_ROWS):
        group = rows[start : start + BATCH_ROWS]
        batches.append(
            {
                "ids": np.stack([r[0] for r in group]),
                "valid": np.stack([r[1] for r in group]),
                "lang": np.asarray([r[2] for r in group], np.int64),
            }
        )
    return batches


def torch_counts(hf, batches, K):
    """tokens [K], over_zero [K, L, F], sum [K, L, F] from hooks on each layer's `mlp.act_fn`."""
    layers = hf.model.layers
    acts = [layer.mlp.act_fn for layer in layers]
    assert len({id(a) for a in acts}) == len(acts), "act_fn modules are shared between layers; hooks would be ambiguous"
    L, F = len(layers), hf.config.intermediate_size
    tokens = np.zeros(K, np.int64)
    over_zero = np.zeros((K, L, F), np.int64)
    sums = np.zeros((K, L, F), np.float64)
    state = {}

    def hook(module, inputs, output, layer):
        a = output.detach().float()  # [b, t, F]
        v = state["valid"][:, :, None]
        onehot = state["onehot"]  # [b, K] float64
        over = ((a > 0) & v).sum(dim=1, dtype=torch.int64)  # [b, F]
        s = torch.where(v, a, 0.0).double().sum(dim=1)  # [b, F]
        over_zero[:, layer] += (onehot.long().T @ over).numpy()
        sums[:, layer] += (onehot.T @ s).numpy()

    handles = [a.register_forward_hook(lambda m, i, o, l=l: hook(m, i, o, l)) for l, a in enumerate(acts)]
    try:
        for batch in batches:
            valid = torch.tensor(batch["valid"])
            onehot = torch.nn.functional.one_hot(torch.tensor(batch["lang"]), K).double()
            state.update(valid=valid, onehot=onehot)
            tokens += (onehot.long().T @ valid.sum(1)).numpy()
            with torch.no_grad():  # the base model: no unembedding needed
                hf.model(input_ids=torch.tensor(batch["ids"]), attention_mask=valid.long())
    finally:
        for h in handles:
            h.remove()
    return tokens, over_zero, sums


def _hf_model(name):
    from transformers import AutoModelForCausalLM

    from jlang.models.packaged import resolve_packaged

    path = resolve_packaged(name)
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=["smollm2", "default"])
def counted(request):
    """Both count sets for one packaged model, computed once per module."""
    name = request.param
    timings = {}
    t0 = time.perf_counter()
    model = jlang.load_model(name, progress=False)
    batches = build_batches(model.tokenizer)
    t1 = time.perf_counter()
    acc = run_stats(model, batches, len(LANGUAGES), progress=False)
    t2 = time.perf_counter()
    hf = _hf_model(name)
    t3 = time.perf_counter()
    tokens, over_zero, sums = torch_counts(hf, batches, len(LANGUAGES))
    t4 = time.perf_counter()
    del hf
    timings = {"jlang_load_s": t1 - t0, "jlang_stats_s": t2 - t1, "hf_load_s": t3 - t2, "hf_stats_s": t4 - t3}
    print(
        f"\n{name}: {len(batches)} batches of {BATCH_ROWS}x{ROW}, tokens per language "
        f"{dict(zip(LANGUAGES, acc.tokens.tolist()))}; L={model.num_layers} F={model.num_neurons}; "
        + ", ".join(f"{k}={v:.1f}" for k, v in timings.items())
    )
    return {"name": name, "acc": acc, "ref": (tokens, over_zero, sums), "timings": timings}


def test_tokens_equal(counted, record_property):
    acc, (tokens, _, _) = counted["acc"], counted["ref"]
    for k, v in counted["timings"].items():
        record_property(k, round(v, 1))
    record_property("tokens", acc.tokens.tolist())
    np.testing.assert_array_equal(acc.tokens, tokens)
    assert tokens.min() >= 900  # every language really has ~1k counted tokens


def test_over_zero_nearly_equal(counted, record_property):
    acc, (_, over_zero, _) = counted["acc"], counted["ref"]
    diff = acc.over_zero - over_zero
    n_diff = int(np.count_nonzero(diff))
    fraction = n_diff / diff.size
    max_diff = int(np.abs(diff).max())
    per_layer = np.count_nonzero(diff, axis=(0, 2))
    print(
        f"\n{counted['name']}: over_zero differs in {n_diff} of {diff.size} counts "
        f"(fraction {fraction:.2e}), max |diff| {max_diff}, net jlang-torch {int(diff.sum())}; "
        f"per layer {per_layer.tolist()}"
    )
    record_property("over_zero_differing", n_diff)
    record_property("over_zero_fraction", fraction)
    record_property("over_zero_max_abs_diff", max_diff)
    assert fraction <= MAX_OVER_ZERO_FRACTION


def test_sums_close(counted, record_property):
    acc, (_, _, sums) = counted["acc"], counted["ref"]
    delta = np.abs(acc.sum - sums)
    # relative to the scale of each layer's sums (single entries can cancel to ~0)
    scale = np.abs(sums).max(axis=(0, 2), keepdims=True)
    rel_layer = float((delta / scale).max())
    rel_entry = delta / np.maximum(np.abs(sums), 1e-12)
    big = np.abs(sums) > 1e-2 * scale
    median_rel = float(np.median(rel_entry[big]))
    print(
        f"\n{counted['name']}: sum max|Δ| / layer max|Σa| = {rel_layer:.2e}; "
        f"median entry rel error (|Σa| > 1% of layer scale) {median_rel:.2e}"
    )
    record_property("sum_max_rel_to_layer_scale", rel_layer)
    record_property("sum_median_rel_error", median_rel)
    assert rel_layer <= 1e-3
    np.testing.assert_allclose(acc.sum, sums, rtol=1e-2, atol=1e-3 * scale.max())


@pytest.mark.parametrize("top_rate", [0.01, 0.05])
def test_lape_masks_agree(counted, top_rate, record_property):
    acc, (tokens, over_zero, _) = counted["acc"], counted["ref"]
    ours = lape(ActivationStats(LANGUAGES, acc.tokens, acc.over_zero), top_rate=top_rate)
    ref = lape(ActivationStats(LANGUAGES, tokens, over_zero), top_rate=top_rate)
    a, b = ours.masks, ref.masks
    jaccard = float((a & b).sum() / max((a | b).sum(), 1))
    sel_a, sel_b = a.any(0), b.any(0)
    jaccard_neurons = float((sel_a & sel_b).sum() / max((sel_a | sel_b).sum(), 1))
    print(
        f"\n{counted['name']} LAPE top_rate={top_rate}: {int(a.sum())} vs {int(b.sum())} (language, neuron) pairs "
        f"(per language {a.sum(axis=(1, 2)).tolist()}), Jaccard {jaccard:.4f}; "
        f"selected neurons {int(sel_a.sum())} vs {int(sel_b.sum())}, Jaccard {jaccard_neurons:.4f}"
    )
    record_property(f"lape_{top_rate}_jaccard", jaccard)
    record_property(f"lape_{top_rate}_neuron_jaccard", jaccard_neurons)
    record_property(f"lape_{top_rate}_pairs", int(a.sum()))
    assert a.sum() > 0 and sel_a.sum() == ours.meta["num_selected"] - ours.meta["num_unassigned"]
    assert jaccard >= MIN_JACCARD
