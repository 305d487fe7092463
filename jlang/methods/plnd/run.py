"""The PLND pass: sample documents, score them in one jitted forward per batch, fold per-language top-k counts.

Selection (as released, `neuron_detection.py`): per document and layer, the `top_ffn` FFN
neurons and the `top_attn` Q/K and V/O dimensions with the largest scores (ties: the lower
index first, `lax.top_k`). Everything is computed inside one jitted forward per batch (one
document per row, padding never counts), sharded by the model's mesh; only per-language
top-k counts `[K, L, n]` come back to the host, where they fold exactly (int64) into a
`PLNDResult`. The batch loop is the one every pass shares (`jlang.parallel.batch_loop`).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlang import __version__, parallel
from jlang.data.pipeline import TokenizedCorpus, TokenizedLanguage, make_batches, tokenize_corpus
from jlang.data.sources import Corpus, CorpusError
from jlang.methods.plnd.common import PARTS, PLNDError, check_mode, check_parts
from jlang.methods.plnd.result import PLNDResult
from jlang.methods.plnd.scores import document_scores_fn
from jlang.parallel import distributed
from jlang.parallel.batch_loop import Throughput, pipelined, place_rows

RELEASED_SEED = 112  # neuron_detection.py: random.seed(112); random.sample(lines, N)
REFERENCE = "Zhao et al. 2024, DAMO-NLP-SG/multilingual_analysis (neuron_detection, neuron_deactivate)"


def topk_membership(scores: jax.Array, k: int) -> jax.Array:
    """bool, same shape as `scores` `[..., n]`: the `k` largest along the last axis (ties: lower index first)."""
    _, idx = jax.lax.top_k(scores, k)
    return jnp.put_along_axis(jnp.zeros(scores.shape, bool), idx, True, axis=-1, inplace=False)


def language_counts(member: jax.Array, is_doc: jax.Array, lang: jax.Array, num_languages: int) -> jax.Array:
    """int32 `[K, L, n]`: for each language, the documents whose top-k held each neuron.

    `member` bool `[b, L, n]`, `is_doc` bool `[b]` (rows with a valid token), `lang` int `[b]` (-1: padding row).
    """
    onehot = jax.nn.one_hot(lang, num_languages, dtype=jnp.int32) * is_doc[:, None].astype(jnp.int32)
    return jnp.einsum("bk,bln->kln", onehot, member.astype(jnp.int32))


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "mode", "parts", "top_ffn", "top_attn", "num_languages"),
)
def plnd_step(
    params,
    ids,
    positions,
    valid,
    lang,
    *,
    cfg: Any,
    mode: str,
    top_ffn: int,
    top_attn: int,
    num_languages: int,
    parts: tuple[str, ...] = PARTS,
) -> dict[str, jax.Array]:
    """The jitted per-batch step: one document per row -> per-language top-k counts.

    Returns `{"ffn": int32 [K, L, F], "qk", "vo": int32 [K, L, H*D], "documents": int32 [K]}` (the scored parts).
    """
    tops = {"ffn": top_ffn, "qk": top_attn, "vo": top_attn}
    scores = document_scores_fn(params, ids, positions, valid, cfg=cfg, mode=mode, parts=parts)
    is_doc = jnp.any(valid, axis=1) & (lang >= 0)
    out = {
        name: language_counts(topk_membership(x, tops[name]), is_doc, lang, num_languages) for name, x in scores.items()
    }
    out["documents"] = jnp.sum(jax.nn.one_hot(lang, num_languages, dtype=jnp.int32) * is_doc[:, None], axis=0)
    return out


def check_tops(cfg: Any, top_ffn: int, top_attn: int) -> None:
    """`top_ffn` and `top_attn` are integers in `[1, F]` and `[1, H*D]` of the model config `cfg`."""
    width = cfg.num_heads * cfg.head_dim
    for name, k, n, what in (
        ("top_ffn", top_ffn, cfg.d_ff, "FFN neurons per layer"),
        ("top_attn", top_attn, width, "attention dimensions (heads x head_dim) per layer"),
    ):
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= int(k) <= n:
            raise PLNDError(f"{name}={k!r} must be an integer in [1, {n}]: the model has {n} {what}")


def run_plnd(
    model: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    languages: Sequence[str],
    *,
    mode: str = "code",
    top_ffn: int,
    top_attn: int,
    parts: Sequence[str] = PARTS,
    shared_languages: Sequence[str] | None = None,
    total: int | None = None,
    trim: bool = True,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> PLNDResult:
    """Fold the per-language top-k counts of every batch (one document per row) into a `PLNDResult`.

    `batches` yield host dicts: `ids` int `[b, seq]`, `valid` bool `[b, seq]`, `lang` int `[b]`
    (-1: padding row), optionally `positions`. Only `parts` are scored. With `trim` (one process),
    each batch is cut to the power of two (>= 16) above its longest row, so short documents do
    not pay the `seq²` attention score of the longest.
    """
    check_mode(mode)
    parts = check_parts(parts)
    check_tops(model.config, top_ffn, top_attn)
    step = functools.partial(
        plnd_step,
        cfg=model.config,
        mode=mode,
        top_ffn=int(top_ffn),
        top_attn=int(top_attn),
        num_languages=len(languages),
        parts=parts,
    )
    totals: dict[str, np.ndarray] = {}  # name -> int64 [K, L, n] / [K] summed over batches
    rate = Throughput(total, f"PLND ({mode})", "documents", enabled=progress, decimals=1)
    start = time.perf_counter()

    def dispatch(batch):
        placed = place_rows(model, batch, trim=trim)
        return step(model.params, placed["ids"], placed["positions"], placed["valid"], placed["lang"])

    def fold(index, batch, result):
        host = {name: parallel.to_host(x).astype(np.int64) for name, x in result.items()}
        for name, x in host.items():
            totals[name] = totals[name] + x if name in totals else x
        rate.update(int(host["documents"].sum()), documents=int(totals["documents"].sum()))

    count = pipelined(batches, dispatch, fold)
    rate.close()
    if count == 0:
        raise PLNDError("no batch: the corpus gave no document")
    info = dict(meta or {})
    info.update(
        mode=mode,
        parts=list(parts),
        top_ffn=int(top_ffn),
        top_attn=int(top_attn),
        **_model_meta(model),
        jlang_version=__version__,
        seconds=time.perf_counter() - start,
        reference=REFERENCE,
    )
    counts = {p: totals[p] for p in parts}
    return PLNDResult(list(languages), totals["documents"], counts, shared_languages, info)


def _model_meta(model: Any) -> dict[str, Any]:
    """The model's name and the shape `plnd_edits` needs to map units onto weights."""
    c = model.config
    return {
        "model": model.name,
        "source": model.source,
        "family": model.family,
        "num_layers": c.num_layers,
        "num_neurons": c.d_ff,
        "num_heads": c.num_heads,
        "num_kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
    }


def sample_documents(
    tok: Any,
    per_language: int,
    *,
    seed: int = RELEASED_SEED,
    doc_mode: str = "pad",
    seq_len: int | None = None,
) -> Any:
    """A `TokenizedCorpus` holding the documents PLND reads, per language.

    * `doc_mode="pad"` (released): `per_language` documents drawn as
      `random.seed(seed); random.sample(documents, per_language)` (`neuron_detection.py`, seed 112),
      each one row (truncated to `seq_len` by `make_batches`).
    * `doc_mode="pack"` (corpora of short messages): documents in the same random order,
      concatenated and cut into `per_language` windows of `seq_len` tokens; each window is a document.
    """
    if doc_mode not in ("pad", "pack"):
        raise PLNDError(f"doc_mode must be 'pad' or 'pack', got {doc_mode!r}")
    if not isinstance(per_language, (int, np.integer)) or per_language < 1:
        raise PLNDError(f"documents per language must be a positive integer, got {per_language!r}")
    if doc_mode == "pack" and not seq_len:
        raise PLNDError("doc_mode='pack' needs seq_len (the window size)")
    data = {
        lang: _sample_language(lang, tok.data[lang], tok.has_pairs.get(lang), per_language, seed, doc_mode, seq_len)
        for lang in tok.languages
    }
    return TokenizedCorpus(tok.languages, data, tok.pad_id, tok.bos_id, tok.add_bos, tok.add_eos, dict(tok.has_pairs))


def _sample_language(
    lang: str,
    t: TokenizedLanguage,
    has_pairs: bool | None,
    per_language: int,
    seed: int,
    doc_mode: str,
    seq_len: int | None,
) -> TokenizedLanguage:
    """One language's documents for `sample_documents`: drawn with `random.Random(seed)`, concatenated."""
    if t.from_ids_file:
        raise PLNDError(f"language {lang!r} is a token-id stream without document boundaries; PLND needs documents")
    if has_pairs:
        raise PLNDError(f"language {lang!r} holds (prompt, response) pairs; PLND scores plain documents")
    n = t.n_docs
    if n == 0:
        raise PLNDError(f"language {lang!r} has no document")
    rng = random.Random(seed)
    if doc_mode == "pad":
        if per_language > n:
            raise PLNDError(
                f"language {lang!r} has {n} documents, fewer than {per_language} requested; "
                "ask for fewer documents per language"
            )
        chosen = rng.sample(range(n), per_language)
    else:
        order = rng.sample(range(n), n)
        lengths = np.diff(t.offsets)[order]
        need = per_language * int(seq_len)
        enough = np.flatnonzero(np.cumsum(lengths) >= need)
        if enough.size == 0:
            raise PLNDError(
                f"language {lang!r} has {int(lengths.sum())} tokens, fewer than {per_language} "
                f"windows of {seq_len}; ask for fewer documents or a shorter seq_len"
            )
        chosen = order[: int(enough[0]) + 1]
    pieces = [t.ids[t.offsets[d] : t.offsets[d + 1]] for d in chosen]
    offsets = np.zeros(len(pieces) + 1, np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    return TokenizedLanguage(np.concatenate(pieces).astype(np.int32), offsets, np.zeros(len(pieces), np.int64))


def plnd(
    model: Any,
    corpus: Any,
    *,
    languages: Sequence[str] | None = None,
    documents_per_language: int = 100,
    top_ffn: int,
    top_attn: int,
    mode: str = "code",
    parts: Sequence[str] = PARTS,
    doc_mode: str = "pad",
    seq_len: int = 256,
    batch_size: int = 8,
    seed: int = RELEASED_SEED,
    shared_languages: Sequence[str] | None = None,
    add_bos: bool | None = None,
    mesh: Any = None,
    progress: bool = True,
) -> PLNDResult:
    """PLND on a multilingual corpus: sample documents, score them in one jitted pass, intersect, remove shared.

    Args:
      model: a `jlang.Model` (its mesh, or `mesh`, shards the pass: rows over `data`, heads/neurons over `model`).
      corpus: a `Corpus` or mapping language -> source of plain-text documents.
      languages: which languages (default: the corpus's).
      documents_per_language: documents sampled per language (released: 1000 web documents; `random.seed(112)`).
      top_ffn, top_attn: per-document, per-layer top-k (released README: 2000 / 1000; Llama-3: 12000 / 2000).
      mode: "code" (bit-faithful to the released scores) or "paper" (FFN: norm of the neuron's output).
      parts: what to score, of "ffn", "qk", "vo" (all; FFN alone costs about one forward).
      doc_mode, seq_len: one document per row truncated to `seq_len` ("pad"), or `seq_len` windows ("pack").
      shared_languages: languages whose common units are removed (default: all).
    """
    check_mode(mode)
    parts = check_parts(parts)
    check_tops(model.config, top_ffn, top_attn)
    if not isinstance(corpus, Corpus):
        corpus = Corpus(corpus)
    langs = list(languages) if languages is not None else list(corpus.languages)
    if not langs:
        raise PLNDError("no language given")
    for lang in shared_languages or ():
        if lang not in langs:
            raise PLNDError(f"shared language {lang!r} is not among the languages {langs}")
    mesh = mesh or model.mesh or distributed.default_mesh()
    if mesh is not None:
        model = model.with_mesh(mesh)
    if model.tokenizer is None:
        raise PLNDError(f"{model.name} has no tokenizer; PLND needs one to tokenize the corpus")
    try:
        tok = tokenize_corpus(corpus, model.tokenizer, languages=langs, add_bos=add_bos, progress=progress)
    except CorpusError as e:
        raise PLNDError(str(e)) from None
    sub = sample_documents(tok, documents_per_language, seed=seed, doc_mode=doc_mode, seq_len=seq_len)
    process_index, process_count = distributed.data_shard(model.mesh)
    max_tokens = documents_per_language * seq_len if doc_mode == "pack" else None
    batches = make_batches(
        sub,
        batch_size=batch_size,
        seq_len=seq_len,
        mode=doc_mode,
        max_tokens=max_tokens,
        process_index=process_index,
        process_count=process_count,
        progress=False,
    )
    meta = {
        "documents_per_language": documents_per_language,
        "doc_mode": doc_mode,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "seed": seed,
        "add_bos": sub.add_bos,
        "tokens": batches.tokens,
        "corpus": {lang: corpus[lang].describe() for lang in langs},
    }
    return run_plnd(
        model,
        batches,
        langs,
        mode=mode,
        top_ffn=top_ffn,
        top_attn=top_attn,
        parts=parts,
        shared_languages=shared_languages,
        total=len(batches),
        progress=progress,
        meta=meta,
    )
