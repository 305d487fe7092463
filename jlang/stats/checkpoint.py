"""The statistics pass's checkpoint: exact totals, the grain iterator, and what makes two passes the same.

A statistics checkpoint (`CheckpointStore`, an `jlang.io.checkpoint.OrbaxRun`) holds

    accumulators  the host `Accumulator` state: int64 counts, float64 sums, float32 max
    iterator      this process's grain iterator state (one JSON file per process)
    run           the run's fingerprint (model, corpus digest, batch_size, seq_len, mode, ...)
                  and the number of batches folded

A resumed pass restores all three and continues with the next batch: no token is
counted twice or skipped, and since the host folds batch results in the same
order, the totals are bit-for-bit those of an uninterrupted pass. A checkpoint of a
different pass (another model, corpus, batch size, ...) is refused, naming what
differs; entries that describe the pass but may change on resume (paths move) are
`INFORMATIVE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from jlang.data.sources import describe_corpus
from jlang.io import checkpoint
from jlang.io.checkpoint import IteratorSnapshot, OrbaxRun, ResumeError, array_digest

FORMAT = "jlang.stats-checkpoint/1"
# Fingerprint entries that describe the run but may legitimately change on resume (paths move).
INFORMATIVE = frozenset({"corpus", "model_source", "mesh", "batches_done"})


class CheckpointStore(OrbaxRun):
    """The checkpoints of one statistics pass: accumulators, this process's iterator state, the run record."""

    def save(self, step: int, accumulators: Mapping[str, np.ndarray], iterator_state: dict, record: Mapping) -> None:
        """Checkpoint `step` batches: copies of the accumulators, this process's iterator state, the record."""
        self.save_items(
            step,
            {**record, "batches_done": int(step)},
            accumulators=ocp.args.StandardSave({k: np.array(v, copy=True) for k, v in accumulators.items()}),
            iterator=grain.checkpoint.CheckpointSave(IteratorSnapshot(iterator_state)),
        )

    def restore(self, step: int, template: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
        """(accumulators shaped like `template`, this process's iterator state) of checkpoint `step`."""
        got = self.restore_items(
            step,
            accumulators=ocp.args.StandardRestore(dict(template)),
            iterator=grain.checkpoint.CheckpointRestore(IteratorSnapshot()),
        )
        state = {k: np.asarray(v) for k, v in dict(got["accumulators"]).items()}
        for k, v in template.items():
            if state[k].shape != np.shape(v) or state[k].dtype != np.asarray(v).dtype:
                raise ResumeError(
                    f"checkpoint {self.directory}/{step}: {k} is {state[k].dtype}{state[k].shape}, "
                    f"expected {np.asarray(v).dtype}{np.shape(v)}"
                )
        return state, got["iterator"].get_state()


def check_fingerprint(saved: Mapping, current: Mapping, where: str) -> None:
    """Raise `ResumeError` unless checkpoint `saved` is of this statistics pass (paths may move)."""
    checkpoint.check_fingerprint(saved, current, where, informative=INFORMATIVE)


def corpus_digest(tok) -> str:
    """A BLAKE2b digest of a `TokenizedCorpus`: languages, ids, document offsets and counted spans.

    Two runs with the same digest feed the same tokens; it catches an edited corpus file,
    another tokenizer, or a changed BOS setting, wherever the files live.
    """
    per_language = (tok.data[lang] for lang in tok.languages)
    arrays = [arr for t in per_language for arr in (t.ids, t.offsets, t.counted_from)]
    return array_digest(*arrays, header=repr((tuple(tok.languages), tok.pad_id, tok.add_bos, tok.add_eos)))


def run_fingerprint(
    model, batches, *, corpus: Any = None, digest: str | None = None, max_tokens: int | None = None, seed: int = 0
) -> dict:
    """What makes two statistics runs the same run: resuming one with the other's checkpoint is refused."""
    mesh = getattr(model, "mesh", None)
    return {
        "format": FORMAT,
        "model": model.name,
        "model_source": str(model.source),
        "family": model.family,
        "dtype": model.dtype,
        "layers": int(model.num_layers),
        "neurons": int(model.num_neurons),
        "languages": list(batches.languages),
        "corpus": describe_corpus(corpus) if corpus is not None else None,
        "corpus_digest": digest,
        "batch_size": int(batches.batch_size),
        "seq_len": int(batches.seq_len),
        "mode": batches.mode,
        "max_tokens": max_tokens,
        "seed": int(seed),
        "process_count": int(batches.process_count),  # batch shards
        "processes": int(jax.process_count()),  # one grain iterator state per process in the checkpoint
        "num_batches": len(batches),
        "mesh": dict(mesh.shape) if mesh is not None else None,
    }
