"""Every `jlang` entry point on two `jax.distributed` processes (127.0.0.1, CPU) gives the one-process result.

One 2-process launch (1 CPU device per process, so the default mesh is data=2 across
the processes) runs, in one interpreter per process: `identify`, `ppl` twice (data
parallel: each process scores its grain shard; `--mesh 1,2`: the model axis spans
both processes, which then feed the same rows), `generate` (with edits and stop
strings), `lens`, `lss`, `steer` and `compare`. The same commands then run in this
process on one device, and the results are compared.

What "equal" means, measured on this tiny Llama (float32, XLA CPU):

* integers are exactly equal: identify's and compare's masks; ppl's scored tokens and rows; the
  generated token ids (hence texts) of `generate` and `steer`, the identified
  languages and success rates of `steer`; the logit lens's label counts (hence its
  shares, ratios of integers) and top-1 tokens; LSS's item counts and rates;
* floats agree within XLA CPU rounding: the 2-process runs feed other batch shapes
  (2 rows per device instead of 4, other padding widths, a split model axis), and the
  NLL partial sums of the shards are added in another order. Measured: ppl's NLL
  max |diff| 2e-7 on values ~4.9 (relative 4e-8); LSS's mean shifts 4e-7 on values ~0.5.
  Compared with rtol 1e-5.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from test_multihost import run_two_processes

import jlang
from jlang.cli import main

pytest.importorskip("torch")

LANGS = ("en", "fr", "de")  # codes py3langid knows (steer identifies languages); the words are made up


def write_corpus(root: Path, lines: int = 12) -> Path:
    """Train and held-out text of three "languages" over disjoint word ranges of the tiny tokenizer.

    Lines are short (3-4 words), so every prompt built from them fits one compiled width.
    """
    rng = np.random.default_rng(0)
    (root / "heldout").mkdir(parents=True, exist_ok=True)
    for lang, lo in zip(LANGS, (4, 40, 80)):
        for path in (root / f"{lang}.txt", root / "heldout" / f"{lang}.txt"):
            text = [" ".join(f"w{w}" for w in rng.integers(lo, lo + 40, rng.integers(3, 5))) for _ in range(lines)]
            path.write_text("\n".join(text) + "\n")
    return root


def write_parallel(path: Path, corpus: Path) -> Path:
    """LSS's parallel file: line i of every held-out file is one message in three languages."""
    texts = {lang: (corpus / "heldout" / f"{lang}.txt").read_text().splitlines() for lang in LANGS}
    rows = [{"text": {lang: texts[lang][i] for lang in LANGS}} for i in range(len(texts[LANGS[0]]))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_processes(tmp_path: Path, commands: list[list[str]], timeout: float = 240) -> list[str]:
    """Run the `jlang` COMMANDS in turn on 2 processes with 1 CPU device each, the layout as global flags."""
    return run_two_processes(tmp_path, commands, devices=1, timeout=timeout, layout_first=True)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _close(a, b, **kw):
    """Equal nested JSON values: strings, ints, None exactly; floats within `kw` tolerances."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k], **kw)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, **kw)
    elif isinstance(a, float) and isinstance(b, float):
        np.testing.assert_allclose(a, b, **kw)
    else:
        assert a == b


def test_entry_points_on_two_processes_equal_one_process(tiny_dirs, tmp_path):
    from jlang.data.sources import resolve_corpus
    from jlang.masks import NeuronMasks
    from jlang.stats.collect import collect_stats

    model_dir, _ = tiny_dirs["llama2"]
    corpus = write_corpus(tmp_path / "corpus")
    parallel = write_parallel(tmp_path / "parallel.jsonl", corpus)
    model = jlang.load_model(model_dir, progress=False)
    stats = tmp_path / "stats.npz"
    collect_stats(model, resolve_corpus(str(corpus), LANGS), batch_size=4, seq_len=16, progress=False).save(stats)
    one, two = tmp_path / "one", tmp_path / "two"

    def commands(out: Path, *, multi: bool) -> list[list[str]]:
        masks = one / "masks.npz"  # the evaluations use the one-process masks (identify's are compared separately)
        model = ["--model", str(model_dir)]
        common = [*model, "--corpus", str(corpus), "--masks", str(masks), "--no-progress", "--vocab-chunk", "64"]
        ppl = ["ppl", *common, "--seq-len", "16", "--batch-size", "2" if multi else "4"]  # rows per shard, as in stats
        # generate with the shapes and settings of steer's generations, which then reuse its compiled programs
        generate = [
            "generate",
            *model,
            "--prompt",
            "w5 w9 w11 w4 w7 w8",
            "--prompt",
            "w100 w7",
            "--masks",
            str(masks),
            "--max-new-tokens",
            "4",
            "--stop",
            "w17",
            "--deactivate",
            "fr",
            "--repetition-penalty",
            "1.1",
            "--json",
        ]
        lens = ["lens", *common, "--max-texts", "3", "--seq-len", "16", "--batch-size", "4", "--k", "3"]
        lss = ["lss", *common, "--parallel", str(parallel), "--items", "2", "--factors", "4", "--batch-size", "4"]
        steer = [
            "steer",
            *common,
            "--stats",
            str(stats),
            "--languages",
            "en",
            "fr",
            "--prompts-per-language",
            "2",
            "--deactivate-value",
            "none",
            "--max-new-tokens",
            "4",
        ]
        # two tiny models of the same shapes and tokenizer stand in for a base and an aligned checkpoint
        compare = [
            "compare",
            "--base",
            str(model_dir),
            "--aligned",
            str(tiny_dirs["mistral"][0]),
            "--corpus",
            str(corpus),
            "--languages",
            *LANGS,
            "--aligned-languages",
            "fr",
            "--no-progress",
            "--vocab-chunk",
            "64",
            "--batch-size",
            "2" if multi else "4",
            "--seq-len",
            "16",
            "--ppl-seq-len",
            "16",
            "--top-rate",
            "0.05",
        ]
        return [
            ["identify", "--stats", str(stats), "--top-rate", "0.05", "--out", str(out / "masks.npz")],
            [*ppl, "--out", str(out / "ppl-data")],
            *([[*ppl, "--mesh", "1,2", "--out", str(out / "ppl-model")]] if multi else []),
            [*generate, "--out", str(out / "generate.jsonl")],
            [*lens, "--out", str(out / "lens")],
            [*lss, "--out", str(out / "lss")],
            [*steer, "--out", str(out / "steer")],
            [*compare, "--out", str(out / "compare")],
        ]

    assert main(commands(one, multi=False)[0]) == 0  # the masks every evaluation below uses
    logs = run_processes(tmp_path, commands(two, multi=True))
    for cmd in commands(one, multi=False)[1:]:
        assert main(cmd) == 0, cmd

    # results are reported once, by process 0; the other process exits cleanly with the same result
    markers = (
        "diagonal dominates",
        '"continuation"',
        "share of the prompt's language",
        "mean LSS",
        "mean success",
        "% of L·F",
    )
    for marker in markers:
        assert marker in logs[0] and marker not in logs[1], marker
    outputs = ("ppl-data/ppl.json", "ppl-model/ppl.png", "generate.jsonl", "lens/lens.json", "lss/lss.png")
    for written in (*outputs, "steer/steering.json"):
        assert (two / written).is_file(), written

    # identify: host-side, the same masks
    np.testing.assert_array_equal(NeuronMasks.load(two / "masks.npz").masks, NeuronMasks.load(one / "masks.npz").masks)

    # ppl: sharded rows (data=2) and shared rows (model=2) give the one-process matrix
    ref = _load(one / "ppl-data" / "ppl.json")
    for layout in ("ppl-data", "ppl-model"):
        got = _load(two / layout / "ppl.json")
        assert got["tokens"] == ref["tokens"] and got["sequences"] == ref["sequences"] and got["rows"] == ref["rows"]
        for key in ("nll", "nll_token"):
            np.testing.assert_allclose(np.array(got[key]), np.array(ref[key]), rtol=1e-5, err_msg=f"{layout} {key}")
        np.testing.assert_allclose(np.array(got["delta_nll"]), np.array(ref["delta_nll"]), atol=1e-5)
        assert got["meta"]["processes"] == 2
    assert _load(two / "ppl-data" / "ppl.json")["meta"]["batch_shards"] == 2
    assert _load(two / "ppl-model" / "ppl.json")["meta"]["batch_shards"] == 1

    # generate: the same tokens, hence the same texts
    generated = (two / "generate.jsonl").read_text()
    assert generated == (one / "generate.jsonl").read_text()
    assert len(generated.splitlines()) == 2

    # lens: integer counts, so exactly equal shares and top-1 tokens
    got, ref = _load(two / "lens" / "lens.json"), _load(one / "lens" / "lens.json")
    assert got["shares"] == ref["shares"] and got["top1"] == ref["top1"] and got["positions"] == ref["positions"]

    # lss: the same rates and counts; the mean shifts within rounding
    got, ref = _load(two / "lss" / "lss.json"), _load(one / "lss" / "lss.json")
    assert got["lss"] == ref["lss"] and got["items"] == ref["items"]
    _close(got["mean_shift"], ref["mean_shift"], rtol=1e-5, atol=1e-5)
    _close(got["d_none"], ref["d_none"], rtol=1e-5, atol=1e-6)

    # compare (another helper's command): the same statistics, masks, perplexities and comparison
    got, ref = _load(two / "compare" / "compare.json"), _load(one / "compare" / "compare.json")
    for meta in (got["meta"], ref["meta"]):
        del meta["seconds"], meta["tokens_digest"]  # timings; the digest covers --batch-size, rows per shard
    _close(got, ref, rtol=1e-5, atol=1e-6)
    for which in ("base", "aligned"):
        np.testing.assert_array_equal(
            NeuronMasks.load(two / "compare" / f"masks_{which}.npz").masks,
            NeuronMasks.load(one / "compare" / f"masks_{which}.npz").masks,
        )

    # steer: the same generations, identified languages and rates
    got, ref = _load(two / "steer" / "steering.json"), _load(one / "steer" / "steering.json")
    assert got["generations"] == ref["generations"] and got["success"] == ref["success"]
    assert got["counts"] == ref["counts"]


# ----------------------------------------------------------------------------- the pieces, on one process


def test_merge_plans_gives_every_shard_the_same_batches_and_widths():
    from jlang.models.scoring import merge_plans, plan_batches

    # shard 0 has three rows (two batches of 2), shard 1 one long row (one batch)
    plans = [plan_batches(np.array([3, 40, 5]), 2, 64), plan_batches(np.array([20]), 2, 64)]
    assert [(i.tolist(), w) for i, w in plans[0]] == [([0, 2], 16), ([1], 64)]
    mine = [merge_plans(plans, s) for s in range(2)]
    assert [(i.tolist(), w) for i, w in mine[0]] == [([0, 2], 32), ([1], 64)]  # batch 0 as wide as shard 1's row
    assert [(i.tolist(), w) for i, w in mine[1]] == [([0], 32), ([], 64)]  # shard 1 feeds no row to batch 1


def test_single_process_helpers(tiny_dirs):
    import jax

    from jlang.models.scoring import Scorer, rows_from_token_lists
    from jlang.parallel import distributed, make_mesh

    x = np.arange(6, dtype=np.int64).reshape(3, 2)
    assert [a.tolist() for a in distributed.gather_shards(x, None)] == [x.tolist()]
    np.testing.assert_array_equal(distributed.sum_over_shards(x, None), x)
    mesh = make_mesh(data=4, model=2, devices=jax.devices()[:8])
    assert distributed.local_batch_rows(3, mesh) == 4 and distributed.local_batch_rows(3, None) == 3
    np.testing.assert_array_equal(distributed.local_row_index(mesh, 8), np.arange(8))
    model = jlang.load_model(tiny_dirs["llama2"][0], mesh=mesh, progress=False)
    ids = np.arange(8 * 5, dtype=np.int32).reshape(8, 5) % 100
    placed = distributed.place_whole_batch(model, ids)
    assert placed.sharding == model.place_batch(ids).sharding
    np.testing.assert_array_equal(distributed.local_rows(placed, mesh), ids)
    # on one process the sharded scorer is the plain one
    rows = rows_from_token_lists([[1, 5, 6, 7], [1, 9, 10], [1] + list(range(20, 40))], [0, 0, 0], [0, 0, 1])
    scorer = Scorer(model, vocab_chunk=64)
    np.testing.assert_array_equal(
        scorer.row_sums(rows, batch_size=2, sharded=True), scorer.row_sums(rows, batch_size=2)
    )


@pytest.mark.parametrize("process, written", [(0, True), (1, False)])
def test_result_files_are_written_by_process_zero_only(tmp_path, monkeypatch, process, written):
    """`write_npz` (stats, masks) and `torchfile.save` (LAPE .pt) write on process 0 of a multi-process run."""
    from types import SimpleNamespace

    from jlang.io import torchfile
    from jlang.masks import NeuronMasks

    masks = NeuronMasks(["aa", "bb"], np.eye(2, 6, dtype=bool).reshape(2, 2, 3), {"method": "hand-made"})
    fake_jax = SimpleNamespace(distributed=SimpleNamespace(is_initialized=lambda: True), process_index=lambda: process)
    monkeypatch.setitem(sys.modules, "jax", fake_jax)  # a 2-process run, seen from `process`
    masks.save(tmp_path / "masks.npz")
    torchfile.save(tmp_path / "masks.pt", [[np.arange(3)]])
    monkeypatch.undo()
    assert (tmp_path / "masks.npz").is_file() == written and (tmp_path / "masks.pt").is_file() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == (["masks.npz", "masks.pt"] if written else [])


def test_finetune_on_two_processes_equals_one_process(tiny_dirs, tmp_path):
    """`jlang finetune` (another helper's command) on 2 processes: the rows of each step split over the processes.

    Measured with `Model.save` fixed (one shared temporary directory): the same loss history to float32 rounding
    (first step 5.4484 both) and parameters within 1.5e-5 after 4 Adam steps at learning rate 3e-3.
    """
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        words = rng.integers(4, 40, int(rng.integers(3, 7)))
        text = {"aa": " ".join(f"w{w}" for w in words), "bb": " ".join(f"w{w + 40}" for w in words)}
        rows.append({"id": str(i), "text": text})
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def config(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            f"out: {tmp_path / name}\nmodel:\n  source: {tiny_dirs['llama2'][0]}\n"
            f'data:\n  source: {pairs}\n  languages: [bb]\n  source_language: aa\n  template: "{{source}} w3\\n"\n'
            "  seq_len: 20\n  eval_pairs_per_language: 4\n"
            "train:\n  steps: 4\n  batch_size: 4\n  learning_rate: 3.0e-3\n  checkpoint_every: 2\n  vocab_chunk: 48\n"
            "freeze: []\nexport_hf: false\n"
        )
        return path

    assert main(["finetune", str(config("one")), "--no-progress"]) == 0
    logs = run_processes(tmp_path, [["finetune", str(config("two")), "--no-progress"]])
    assert "wrote" in logs[0] and "wrote" not in logs[1]
    one, two = (_load(tmp_path / name / "loss.json") for name in ("one", "two"))
    assert two["processes"] == 2 and [h["tokens"] for h in one["history"]] == [h["tokens"] for h in two["history"]]
    _close([h["loss"] for h in two["history"]], [h["loss"] for h in one["history"]], rtol=1e-5)
    _close(two["eval"], one["eval"], rtol=1e-5)
    a, b = (jlang.load_model(tmp_path / name / "checkpoint", progress=False).params for name in ("one", "two"))
    for k in a:
        np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), atol=1e-4, err_msg=k)
