"""Corpus sources and the grain batch pipeline: exact packing, masks, sharding, determinism, errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from jlang.data import Corpus, CorpusError, make_batches, tokenize_corpus
from jlang.data.sources import as_source, read_documents

EN = [f"the quick brown fox number {i} jumps over the lazy dog" for i in range(23)] + ["hello world"]
FR = [f"le renard brun numéro {i} saute par-dessus le chien" for i in range(11)] + ["bonjour le monde"]
JA = ["こんにちは世界", "日本語の文です。", "東京は大きい都市です"] * 4


@pytest.fixture(scope="module")
def tok():
    """A byte-level BPE tokenizer trained in-test (no download), with <pad>=0, <bos>=1, <eos>=2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token=None))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t.train_from_iterator(EN + FR + JA, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def collect(batches):
    """All batches of an iterator, stacked: dict of arrays [n_batches * batch, ...]."""
    out = list(batches)
    return {k: np.concatenate([b[k] for b in out]) for k in out[0]}


def single(corpus, tok=None, **kw):
    return make_batches(corpus, tok, process_index=0, process_count=1, progress=False, **kw)


def test_pack_is_the_concatenated_stream_cut_into_whole_windows(tok):
    seq = 16
    b = single({"en": EN, "fr": FR}, tok, batch_size=3, seq_len=seq, mode="pack")
    got = collect(b)
    assert got["ids"].dtype == np.int32 and got["valid"].dtype == bool and got["lang"].dtype == np.int32
    assert got["ids"].shape[1] == seq and np.array_equal(got["positions"][0], np.arange(seq))
    for k, docs in enumerate([EN, FR]):
        stream = [i for d in docs for i in [tok.bos_token_id] + encode(tok, d)]
        expect = stream[: len(stream) // seq * seq]
        rows = got["lang"] == k
        assert got["valid"][rows].all()
        assert got["ids"][rows].reshape(-1).tolist() == expect
        assert b.tokens[b.languages[k]] == len(expect)
    assert len(b) == got["ids"].shape[0] // 3


def test_pack_max_tokens_and_no_bos(tok):
    seq = 8
    b = single({"en": EN}, tok, batch_size=2, seq_len=seq, mode="pack", max_tokens=41, add_bos=False)
    got = collect(b)
    stream = [i for d in EN for i in encode(tok, d)]
    assert got["ids"][got["lang"] == 0].reshape(-1).tolist() == stream[: 41 // seq * seq]
    assert b.tokens == {"en": 40}


def test_pad_rows_and_valid_mask(tok):
    seq = 12
    b = single({"fr": FR, "ja": JA}, tok, batch_size=5, seq_len=seq, mode="pad")
    got = collect(b)
    real = got["row"] >= 0
    assert real.sum() == len(FR) + len(JA)
    docs = FR + JA
    for r in range(len(docs)):
        i = np.nonzero(got["row"] == r)[0][0]
        ids = ([tok.bos_token_id] + encode(tok, docs[r]))[:seq]
        assert got["ids"][i][got["valid"][i]].tolist() == ids
        assert got["valid"][i].tolist() == [True] * len(ids) + [False] * (seq - len(ids))
        assert (got["ids"][i][len(ids) :] == tok.pad_token_id).all()
        assert got["lang"][i] == (0 if r < len(FR) else 1)
    assert b.tokens["fr"] == sum(min(seq, 1 + len(encode(tok, d))) for d in FR)


def test_prompt_response_mask_covers_the_response(tok):
    pairs = [("Q: hello world\nA:", " bonjour le monde"), ("Q: le chien\nA:", " the lazy dog")]
    b = single({"en": pairs}, tok, batch_size=2, seq_len=32, mode="pad")
    got = collect(b)
    for i, (p, r) in enumerate(pairs):
        full = [tok.bos_token_id] + encode(tok, p + r)
        start = 1 + len(encode(tok, p))
        assert encode(tok, p + r)[: start - 1] == encode(tok, p)  # the prompt's tokens are a prefix here
        assert got["ids"][i][: len(full)].tolist() == full
        assert np.nonzero(got["valid"][i])[0].tolist() == list(range(start, len(full)))
    with pytest.raises(CorpusError, match="mode='pad'"):
        single({"en": pairs}, tok, batch_size=2, seq_len=8, mode="pack")


def test_prompt_response_from_jsonl(tok, tmp_path):
    path = tmp_path / "mgsm.jsonl"
    path.write_text("\n".join(json.dumps({"q": p, "a": r}) for p, r in [("1+1=", " 2"), ("2+2=", " 4")]) + "\n")
    corpus = Corpus({"en": path}, prompt_field="q", response_field="a")
    assert read_documents(corpus["en"]) == [("1+1=", " 2"), ("2+2=", " 4")]
    got = collect(single(corpus, tok, batch_size=2, seq_len=8, mode="pad"))
    assert got["valid"].sum() == sum(
        len(encode(tok, p + r)) - len(encode(tok, p)) for p, r in [("1+1=", " 2"), ("2+2=", " 4")]
    )


def test_partial_final_batch_is_padded_with_invalid_rows(tok):
    b = single({"fr": FR}, tok, batch_size=5, seq_len=16, mode="pad")  # 12 rows -> 3 batches, 3 padding rows
    batches = list(b)
    assert len(batches) == len(b) == 3 and b.padding_rows == 3
    assert all(x["ids"].shape == (5, 16) for x in batches)
    last = batches[-1]
    assert last["valid"][2:].sum() == 0 and (last["lang"][2:] == -1).all() and (last["row"][2:] == -1).all()
    rows = np.concatenate([x["row"] for x in batches])
    assert sorted(rows[rows >= 0].tolist()) == list(range(len(FR)))


@pytest.mark.parametrize("mode,shuffle", [("pack", False), ("pad", False), ("pad", True)])
def test_two_processes_split_the_rows_exactly(tok, mode, shuffle):
    kw = dict(batch_size=3, seq_len=16, mode=mode, shuffle=shuffle, seed=7, progress=False)
    whole = collect(make_batches({"en": EN, "fr": FR}, tok, process_index=0, process_count=1, **kw))
    parts = [make_batches({"en": EN, "fr": FR}, tok, process_index=p, process_count=2, **kw) for p in range(2)]
    assert len(parts[0]) == len(parts[1])
    got = [collect(p) for p in parts]
    rows = [g["row"][g["row"] >= 0] for g in got]
    assert not set(rows[0].tolist()) & set(rows[1].tolist())
    union = np.concatenate(rows)
    assert sorted(union.tolist()) == sorted(whole["row"][whole["row"] >= 0].tolist())
    by_row = {
        int(r): (whole["ids"][i], whole["valid"][i], whole["lang"][i]) for i, r in enumerate(whole["row"]) if r >= 0
    }
    for g in got:
        for i, r in enumerate(g["row"]):
            if r >= 0:
                ids, valid, lang = by_row[int(r)]
                assert (
                    np.array_equal(g["ids"][i], ids) and np.array_equal(g["valid"][i], valid) and g["lang"][i] == lang
                )
    assert sum(int(g["valid"].sum()) for g in got) == int(whole["valid"].sum())


def test_deterministic_given_seed_and_resumable(tok):
    tk = tokenize_corpus({"en": EN, "fr": FR}, tok, progress=False)
    a = collect(single(tk, batch_size=4, seq_len=8, mode="pad", shuffle=True, seed=3))
    b = collect(single(tk, batch_size=4, seq_len=8, mode="pad", shuffle=True, seed=3))
    c = collect(single(tk, batch_size=4, seq_len=8, mode="pad", shuffle=True, seed=4))
    plain = collect(single(tk, batch_size=4, seq_len=8, mode="pad"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["row"], c["row"])
    assert plain["row"][plain["row"] >= 0].tolist() == list(range(len(EN) + len(FR)))  # default: LAPE order
    assert sorted(a["row"].tolist()) == sorted(plain["row"].tolist())

    batches = single(tk, batch_size=4, seq_len=8, mode="pad", shuffle=True, seed=3)
    it = iter(batches)
    for _ in range(3):
        next(it)
    state = it.get_state()
    rest = [x["row"] for x in it]
    resumed = [x["row"] for x in batches.iterator(state)]
    assert len(rest) == len(batches) - 3 and all(np.array_equal(x, y) for x, y in zip(rest, resumed))


def test_language_selection_sets_lang_ids(tok):
    b = single({"en": EN, "fr": FR, "ja": JA}, tok, batch_size=4, seq_len=8, mode="pad", languages=["ja", "en"])
    got = collect(b)
    assert b.languages == ("ja", "en")
    assert (got["lang"][got["row"] >= 0][: len(JA)] == 0).all()
    with pytest.raises(CorpusError, match="not in the corpus"):
        single({"en": EN}, tok, batch_size=4, seq_len=8, languages=["de"])


def test_lape_token_id_file(tok, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("jlang.io.torchfile")
    ids = np.array([i for d in EN for i in [tok.bos_token_id] + encode(tok, d)], dtype=np.int64)
    torch.save(torch.from_numpy(ids), tmp_path / "id.en.train.llama")
    torch.save(torch.from_numpy(ids[:50]), tmp_path / "id.en.valid.llama")
    (tmp_path / "fr.txt").write_text("\n".join(FR) + "\n", encoding="utf-8")
    corpus = Corpus.from_dir(tmp_path)
    assert corpus.languages == ("en", "fr") and corpus["en"].kind == "token_ids"
    b = single(corpus, tok, batch_size=2, seq_len=16, mode="pack", max_tokens=100)
    got = collect(b)
    assert got["ids"][got["lang"] == 0].reshape(-1).tolist() == ids[: 100 // 16 * 16].tolist()
    assert Corpus.from_dir(tmp_path, split="valid")["en"].path.name == "id.en.valid.llama"
    with pytest.raises(CorpusError, match="mode='pack'"):
        single(corpus, tok, batch_size=2, seq_len=16, mode="pad")
    torch.save(torch.tensor([1, 2, len(tok) + 5]), tmp_path / "big.pt")
    with pytest.raises(CorpusError, match="different tokenizer"):
        single({"en": tmp_path / "big.pt"}, tok, batch_size=1, seq_len=2)
    torch.save(torch.zeros(2, 3, dtype=torch.long), tmp_path / "matrix.pt")
    with pytest.raises(CorpusError, match="flat"):
        single({"en": tmp_path / "matrix.pt"}, tok, batch_size=1, seq_len=2)


def test_text_and_jsonl_files(tok, tmp_path):
    (tmp_path / "en.txt").write_text("\ufeffhello world\n\n  \nthe lazy dog\r\n", encoding="utf-8")
    (tmp_path / "fr.jsonl").write_text(json.dumps({"body": "bonjour le monde", "n": 1}) + "\n\n", encoding="utf-8")
    assert read_documents(as_source(tmp_path / "en.txt")) == ["hello world", "the lazy dog"]
    assert read_documents(as_source(tmp_path / "fr.jsonl", field="body")) == ["bonjour le monde"]
    with pytest.raises(CorpusError, match=r"line 1 has no field 'text'"):
        read_documents(as_source(tmp_path / "fr.jsonl"))
    corpus = Corpus.from_dir(tmp_path, field="body")
    assert corpus.languages == ("en", "fr")


def test_bad_inputs_raise_clear_errors(tok, tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        Corpus({"en": tmp_path / "nope.txt"})
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(CorpusError, match="empty"):
        Corpus({"en": tmp_path / "empty.txt"})
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(CorpusError, match="'en'.*no text"):
        single({"en": tmp_path / "blank.txt"}, tok, batch_size=1, seq_len=4)
    with pytest.raises(CorpusError, match="no text"):
        single({"en": []}, tok, batch_size=1, seq_len=4)
    (tmp_path / "latin1.txt").write_bytes("ok line\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1.txt: line 2 \(byte offset 11\) is not valid UTF-8"):
        read_documents(as_source(tmp_path / "latin1.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(CorpusError, match="line 2 is a JSON list"):
        read_documents(as_source(tmp_path / "bad.jsonl"))
    (tmp_path / "long.txt").write_text("short line\n" + "x" * 3000 + "\nanother short line\n")
    with pytest.raises(CorpusError, match="line 2 is 3,001 bytes"):
        read_documents(as_source(tmp_path / "long.txt", max_line_bytes=2000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        docs = read_documents(as_source(tmp_path / "long.txt", max_line_bytes=2000, long_lines="skip"))
    assert docs == ["short line", "another short line"] and "skipped 1 line" in str(caught[0].message)
    with pytest.raises(CorpusError, match="fewer than one window"):
        single({"en": ["hello world"]}, tok, batch_size=1, seq_len=64, mode="pack")
    with pytest.raises(CorpusError, match="directory"):
        Corpus({"en": tmp_path})
    with pytest.raises(CorpusError, match="str or"):
        Corpus({"en": ["ok", 3]})
    with pytest.raises(ValueError, match="mode"):
        single({"en": EN}, tok, batch_size=1, seq_len=4, mode="ragged")
