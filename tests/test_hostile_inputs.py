"""Hostile and broken inputs, one table: each fails with a message that names the problem, and nothing
(no statistics, masks, checkpoint or stray file) is written.

Every case builds its bad input under `tmp_path/in`, runs one command (the `jlang` CLI, its
`stats` command, or a library call), and the test checks the exit code,
that the message matches, that `tmp_path/out` holds no file, and that no pickle payload ran.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_multihost import LANGS, write_corpus

from jlang import cli
from jlang.masks import MaskError, NeuronMasks
from jlang.stats import ActivationStats


class _Evil:
    """A pickle that runs a shell command when unpickled by a plain `pickle.load`."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        import os

        return (os.system, (self.cmd,))


@dataclass
class Ctx:
    """Inputs shared by the cases (fresh copies under `root/in` for every case)."""

    root: Path
    llama: Path
    gemma2: Path

    @property
    def inp(self) -> Path:
        return self.root / "in"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def marker(self) -> Path:
        """Created only if a pickle payload runs."""
        return self.root / "pwned"

    def model_copy(self) -> Path:
        dst = self.inp / "model"
        shutil.copytree(self.llama, dst)
        return dst

    def corpus(self) -> Path:
        return write_corpus(self.inp / "corpus", lines=12)

    def stats_argv(self, *, model: Path | None = None, corpus: Path | None = None, languages=LANGS, extra=()) -> list:
        return [
            "stats",
            "--model",
            str(model or self.llama),
            "--corpus",
            str(corpus or self.corpus()),
            "--languages",
            *languages,
            "--batch-size",
            "2",
            "--seq-len",
            "16",
            "--out",
            str(self.out),
            *extra,
        ]

    def stats_file(self, tokens=(400, 380, 390), layers: int = 3, model: str = "llama2") -> Path:
        rng = np.random.default_rng(0)
        oz = rng.integers(0, 300, (len(tokens), layers, 83))
        path = self.inp / "stats.npz"
        ActivationStats(list(LANGS[: len(tokens)]), np.array(tokens), oz, meta={"model": model}).save(path)
        return path

    def config(self, text: str) -> Path:
        self.inp.mkdir(parents=True, exist_ok=True)
        path = self.inp / "run.yaml"
        path.write_text(f"out: {self.out}\n" + text)
        return path


def stats(argv: list) -> int:
    return cli.main(argv)


def jlang_cli(argv: list) -> int:
    return cli.main(argv)


# ----------------------------------------------------------------------------- case builders
# Each returns (runner, argv) for a command expected to fail with exit code 2, or a callable that must raise.


def config_unknown_key(c: Ctx):
    return jlang_cli, ["run", str(c.config("stats:\n  batch_sise: 4\n"))]


def config_wrong_type(c: Ctx):
    return jlang_cli, ["run", str(c.config("stats:\n  batch_size: eight\n"))]


def config_not_yaml(c: Ctx):
    return jlang_cli, ["run", str(c.config("stats: [unclosed\n"))]


def config_missing_file(c: Ctx):
    return jlang_cli, ["run", str(c.inp / "nope.yaml")]


def config_mesh_too_big(c: Ctx):
    return stats, c.stats_argv(extra=["--mesh", "3,5"])


def config_partial_distributed(c: Ctx):
    return stats, ["--num-processes", "2", *c.stats_argv()]


def model_missing(c: Ctx):
    return stats, c.stats_argv(model=c.inp / "no-model")


def model_unknown_architecture(c: Ctx):
    m = c.model_copy()
    cfg = json.loads((m / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (m / "config.json").write_text(json.dumps(cfg))
    return stats, c.stats_argv(model=m)


def model_truncated_safetensors(c: Ctx):
    m = c.model_copy()
    f = m / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return stats, c.stats_argv(model=m)


def model_truncated_gguf(c: Ctx):
    gguf = pytest.importorskip("gguf")
    c.inp.mkdir(parents=True, exist_ok=True)
    path = c.inp / "cut.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((16, 8), np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.8)])
    return stats, c.stats_argv(model=path)


def model_nan_weights(c: Ctx):
    from safetensors.numpy import load_file, save_file

    m = c.model_copy()
    tensors = load_file(m / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = np.nan
    save_file(tensors, m / "model.safetensors", metadata={"format": "pt"})
    return stats, c.stats_argv(model=m)


def model_pickle_checkpoint_with_code(c: Ctx):
    """A directory whose weights are a pickled `pytorch_model.bin` that would run a command."""
    m = c.model_copy()
    (m / "model.safetensors").unlink()
    (m / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(f"touch {c.marker}"), protocol=2))
    return stats, c.stats_argv(model=m)


def model_mismatched_tokenizer(c: Ctx):
    """A tokenizer with 200 tokens in front of a model with 131 embeddings."""
    from tiny_models import tiny_tokenizer

    m = c.model_copy()
    for f in m.glob("tokenizer*"):
        f.unlink()
    tiny_tokenizer(200).save_pretrained(m)
    corpus = c.inp / "wide"
    corpus.mkdir(parents=True)
    for lang in LANGS:
        (corpus / f"{lang}.txt").write_text("\n".join(" ".join(f"w{w}" for w in range(100 + i, 199)) for i in range(5)))
    return stats, c.stats_argv(model=m, corpus=corpus)


def corpus_missing_directory(c: Ctx):
    return stats, c.stats_argv(corpus=c.inp / "no-corpus")


def corpus_missing_language(c: Ctx):
    return stats, c.stats_argv(languages=("aa", "xx"))


def corpus_empty_language(c: Ctx):
    corpus = c.corpus()
    (corpus / "ee.txt").write_text("")
    return stats, c.stats_argv(corpus=corpus, languages=("aa", "ee"))


def corpus_blank_language(c: Ctx):
    corpus = c.corpus()
    (corpus / "ee.txt").write_text("\n  \n\n")
    return stats, c.stats_argv(corpus=corpus, languages=("aa", "ee"))


def corpus_10mb_line(c: Ctx):
    corpus = c.corpus()
    (corpus / "bb.txt").write_text("w5 " * (10 * 2**20 // 3 + 1) + "\n")
    return stats, c.stats_argv(corpus=corpus)


def corpus_not_utf8(c: Ctx):
    corpus = c.corpus()
    (corpus / "bb.txt").write_bytes("w5 w6\nw7 caf\u00e9 w8\n".encode("latin-1"))
    return stats, c.stats_argv(corpus=corpus)


def corpus_too_small(c: Ctx):
    corpus = c.corpus()
    (corpus / "dd.txt").write_text("w5 w6\n")
    return stats, c.stats_argv(corpus=corpus, languages=("aa", "dd"))


def corpus_token_ids_with_code(c: Ctx):
    """A LAPE token-id file (`id.{lang}.train.*`, read as a torch.save pickle) that would run a command."""
    corpus = c.corpus()
    (corpus / "id.zz.train.llama").write_bytes(pickle.dumps(_Evil(f"touch {c.marker}"), protocol=2))
    return stats, c.stats_argv(corpus=corpus, languages=("aa", "zz"))


def stats_truncated(c: Ctx):
    path = c.stats_file()
    path.write_bytes(path.read_bytes()[:300])
    return jlang_cli, ["identify", "--stats", str(path), "--out", str(c.out / "masks.npz")]


def stats_wrong_kind(c: Ctx):
    c.inp.mkdir(parents=True)
    path = NeuronMasks(["aa"], np.zeros((1, 3, 83), bool)).save(c.inp / "masks.npz")
    return jlang_cli, ["identify", "--stats", str(path), "--out", str(c.out / "masks.npz")]


def stats_from_another_model(c: Ctx):
    return jlang_cli, [
        "identify",
        "--stats",
        str(c.stats_file()),
        "--model",
        str(c.gemma2),
        "--out",
        str(c.out / "masks.npz"),
    ]


def stats_empty_language(c: Ctx):
    return jlang_cli, [
        "identify",
        "--stats",
        str(c.stats_file(tokens=(400, 0, 390))),
        "--out",
        str(c.out / "masks.npz"),
    ]


def mask_pt_with_code(c: Ctx):
    c.inp.mkdir(parents=True)
    path = c.inp / "evil.pt"
    path.write_bytes(pickle.dumps([[_Evil(f"touch {c.marker}")]], protocol=2))
    return jlang_cli, ["show", str(path), "--png", str(c.out / "evil.png")]


def mask_pt_not_masks(c: Ctx):
    c.inp.mkdir(parents=True)
    path = c.inp / "dict.pt"
    from jlang.io import torchfile

    torchfile.save(path, {"n": 5})
    return jlang_cli, ["show", str(path), "--png", str(c.out / "dict.png")]


def mask_truncated(c: Ctx):
    c.inp.mkdir(parents=True)
    path = NeuronMasks(["aa"], np.ones((1, 3, 83), bool)).save(c.inp / "masks.npz")
    path.write_bytes(path.read_bytes()[:-40])
    return jlang_cli, ["export", str(path), "--format", "lape-pt", "--out", str(c.out / "masks.pt")]


def mask_from_another_model(c: Ctx):
    """A mask identified on the 4-layer Gemma 2 applied to the 3-layer Llama."""
    import jlang

    mask = NeuronMasks(["aa"], np.ones((1, 4, 83), bool), meta={"model": "gemma2"})
    model = jlang.load_model(c.llama, progress=False)

    def apply():
        mask.check_fits(model.num_layers, model.num_neurons, model=model.name)

    return apply


def checkpoint_without_resume(c: Ctx):
    from jlang.stats.checkpoint import CheckpointStore

    store = CheckpointStore(c.inp / "ckpt")
    store.save(3, {"tokens": np.zeros(3, np.int64)}, {"next_index": 3}, {"model": "llama2"})
    store.close()
    return stats, c.stats_argv(extra=["--checkpoint-dir", str(c.inp / "ckpt")])


def checkpoint_of_another_run(c: Ctx):
    from jlang.stats.checkpoint import FORMAT, CheckpointStore

    store = CheckpointStore(c.inp / "ckpt")
    store.save(3, {"tokens": np.zeros(3, np.int64)}, {"next_index": 3}, {"format": FORMAT, "model": "other-model"})
    store.close()
    return stats, c.stats_argv(extra=["--checkpoint-dir", str(c.inp / "ckpt"), "--resume"])


# name -> (builder, what the message must say)
CASES: dict[str, tuple[Callable, str]] = {
    "config: unknown key": (
        config_unknown_key,
        r"stats: unknown key\(s\) \['batch_sise'\]; allowed: \['batch_size', 'seq_len'\]",
    ),
    "config: wrong type": (config_wrong_type, r"stats\.batch_size: expected int, got str 'eight'"),
    "config: not YAML": (config_not_yaml, r"run\.yaml: not valid YAML"),
    "config: missing file": (config_missing_file, r"nope\.yaml: no such config file"),
    "config: mesh larger than the devices": (
        config_mesh_too_big,
        r"mesh data=3 x model=5 needs 15 devices, there are \d+",
    ),
    "config: partial multi-process flags": (config_partial_distributed, r"missing --coordinator, --process-id"),
    "model: missing": (model_missing, r"no-model: no such file or directory"),
    "model: unknown architecture": (model_unknown_architecture, r"FalconForCausalLM.*LlamaForCausalLM"),
    "model: truncated safetensors": (model_truncated_safetensors, r"model\.safetensors"),
    "model: truncated GGUF": (model_truncated_gguf, r"cut\.gguf: truncated"),
    "model: NaN weights": (model_nan_weights, r"model\.layers\.1\.mlp\.up_proj\.weight holds NaN"),
    "model: pickled .bin weights with code": (
        model_pickle_checkpoint_with_code,
        r"no \*\.safetensors files \(PyTorch \.bin checkpoints are not read",
    ),
    "model: mismatched tokenizer": (
        model_mismatched_tokenizer,
        r"tokenizes to id 1\d\d, but model model has a vocabulary of 131: the tokenizer \(200 tokens\) does not belong",
    ),
    "corpus: missing directory": (corpus_missing_directory, r"no-corpus does not exist"),
    "corpus: missing language": (corpus_missing_language, r"has no file for \['xx'\]"),
    "corpus: empty language file": (corpus_empty_language, r"language 'ee': corpus file .*ee\.txt is empty"),
    "corpus: only blank lines": (corpus_blank_language, r"ee\.txt holds no text"),
    "corpus: a 10 MB line": (corpus_10mb_line, r"bb\.txt: line 1 is 10,485,76\d bytes, longer than max_line_bytes"),
    "corpus: not UTF-8": (corpus_not_utf8, r"bb\.txt: line 2 \(byte offset 12\) is not valid UTF-8"),
    "corpus: too small for one window": (corpus_too_small, r"language 'dd' has \d tokens, fewer than one window"),
    "corpus: token-id pickle with code": (corpus_token_ids_with_code, r"id\.zz\.train\.llama.*refusing.*system"),
    "stats: truncated file": (stats_truncated, r"stats\.npz: not a readable \.npz file"),
    "stats: a masks file": (
        stats_wrong_kind,
        r"expected a 'jlang\.ActivationStats/' file, found format 'jlang\.NeuronMasks/1'",
    ),
    "stats: from another model": (
        stats_from_another_model,
        r"statistics have 3 layers x 83 neurons, but model gemma2 has 4 x 83: they come from another model",
    ),
    "stats: a language with no tokens": (stats_empty_language, r"languages \['bb'\] have 0 tokens"),
    "masks: .pt pickle with code": (mask_pt_with_code, r"evil\.pt.*refusing.*system"),
    "masks: .pt that is not a mask": (mask_pt_not_masks, r"dict\.pt: expected List\[List\[LongTensor\]\], found dict"),
    "masks: truncated file": (mask_truncated, r"masks\.npz: not a readable \.npz file"),
    "masks: from another model": (
        mask_from_another_model,
        r"mask of 4 layers x 83 neurons \(\['aa'\], made for gemma2\) "
        r"does not fit llama2 with 3 layers x 83 MLP neurons",
    ),
    "checkpoint: present without --resume": (
        checkpoint_without_resume,
        r"holds a checkpoint of an interrupted run \(3 batches done\); pass --resume",
    ),
    "checkpoint: another run's": (
        checkpoint_of_another_run,
        r"checkpoint of a different run \(.*model: checkpoint 'other-model', this run 'llama2'",
    ),
}


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture(scope="module")
def models(tiny_dirs):
    return tiny_dirs["llama2"][0], tiny_dirs["gemma2"][0]


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(name, models, tmp_path, capsys):
    build, message = CASES[name]
    ctx = Ctx(tmp_path, *models)
    action = build(ctx)
    capsys.readouterr()
    if callable(action):
        with pytest.raises(MaskError, match=message):
            action()
    else:
        runner, argv = action
        code = runner(argv)
        err = capsys.readouterr().err
        assert code == 2, err
        assert "jlang: error: " in err, err
        assert re.search(message, err.split("jlang: error: ", 1)[1], flags=re.DOTALL), err
    assert _files(ctx.out) == [], "a failed command left output behind"
    assert not ctx.marker.exists(), "a pickle payload ran"


def test_the_table_covers_every_kind_of_input():
    kinds = {name.split(":")[0] for name in CASES}
    assert kinds >= {"config", "model", "corpus", "stats", "masks"} and len(CASES) >= 15
