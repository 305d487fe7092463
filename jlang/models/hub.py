"""Models by Hugging Face Hub id: `org/name` (or `org/name@revision`) -> a local snapshot directory.

Resolution goes through `huggingface_hub.snapshot_download` and its cache, so
everything users already set up for `transformers` applies:

* only the files a jlang load reads are fetched (`HUB_FILES`: config, tokenizer,
  safetensors and their index); PyTorch `.bin` pickles are never downloaded, and a
  repository that has only those is refused by `SafetensorsSource` with a message;
* `revision` is a branch, tag or commit (`org/name@v1.0`, `revision=`); the
  resolved commit is recorded (`HubSnapshot.commit`) and ends up in every result's
  metadata through `Model.source` (`org/name@<commit>`);
* the token comes from `token=`, else `HF_TOKEN` (or the legacy
  `HUGGING_FACE_HUB_TOKEN`), else the token `huggingface-cli login` stored;
* `HF_HUB_OFFLINE=1` resolves from the cache only (`HF_HUB_CACHE` / `HF_HOME` pick
  the cache), so a pod whose hosts share a pre-filled cache never touches the network.

Several processes (a pod slice, several GPU hosts): process 0 downloads first and
the others wait at a barrier, then resolve from their cache without the network.
When the cache is shared (a network file system), they find process 0's files;
when each host has its own cache, a process that finds nothing downloads into its
host's cache. Either way one process per cache downloads, and the hosts agree on
the commit process 0 resolved (a branch that moves mid-launch is pinned).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from jlang.models.sources import CheckpointError
from jlang.parallel import distributed

# What a jlang load reads from a model repository (the rest, e.g. .bin or .gguf copies, is never fetched).
HUB_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "chat_template.jinja",
)

# `org/name` or `org/name@revision`; Hub names are letters, digits, `-`, `_`, `.`.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubSnapshot:
    """A resolved Hub model: the repository, the revision asked for, the commit it is, the local files."""

    repo_id: str
    revision: str
    commit: str
    path: Path

    @property
    def source(self) -> str:
        """`org/name@<commit>`: what results record as the model's source."""
        return f"{self.repo_id}@{self.commit}"


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """`(repo_id, revision or None)` if `text` has the form of a Hub id and is not a local path, else None."""
    match = _HUB_ID.match(text)
    if match is None or Path(text).expanduser().exists():
        return None
    return match["repo"], match["revision"]


def offline() -> bool:
    """`HF_HUB_OFFLINE`, read now (huggingface_hub reads it once, when it is imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def token_from_environment() -> str | None:
    """`HF_TOKEN`, else the legacy `HUGGING_FACE_HUB_TOKEN`; None lets huggingface_hub use the stored login."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _download(repo_id: str, revision: str, *, token: str | None, local_only: bool) -> Path:
    return Path(
        huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(HUB_FILES),
            token=token,
            local_files_only=local_only,
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
        )
    )


def _snapshot(repo_id: str, revision: str, *, token: str | None) -> Path:
    """The snapshot directory; every failure becomes a `CheckpointError` that says what to do."""
    where = f"{repo_id}@{revision}"
    cache = os.environ.get("HF_HUB_CACHE") or huggingface_hub.constants.HF_HUB_CACHE
    try:
        return _download(repo_id, revision, token=token, local_only=offline())
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{where}: not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set or the Hub cannot be "
            "reached; download it once with network access, or point HF_HUB_CACHE at a cache that holds it"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{repo_id}: no such model repository on the Hub, or it is gated/private; check the id, accept its "
            "licence on the Hub and set HF_TOKEN"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(
            f"{where}: the repository has no revision {revision!r} (a branch, tag or commit)"
        ) from None
    except HfHubHTTPError as e:
        raise CheckpointError(f"{where}: the Hub answered {e}") from None


def resolve(repo_id: str, revision: str | None = None, *, token: str | None = None) -> HubSnapshot:
    """Download (or find in the cache) what jlang reads of `repo_id` at `revision` (default "main").

    On several processes, process 0 resolves first; the others then resolve its commit,
    from their cache if they can (see the module docstring).
    """
    revision = revision or "main"
    token = token or token_from_environment()
    path, error = None, None
    if distributed.is_primary():
        try:
            path = _snapshot(repo_id, revision, token=token)
        except CheckpointError as e:  # every process must reach the broadcast, or the others would wait forever
            error = e
    commit = distributed.broadcast_text(path.name if path is not None else "", "jlang-hub-commit")
    if error is not None:
        raise error
    if not commit:
        raise CheckpointError(f"{repo_id}@{revision}: process 0 could not resolve it (its error says why)")
    if path is None:
        try:
            path = _download(repo_id, commit, token=token, local_only=True)
        except LocalEntryNotFoundError:  # this host has its own cache: fill it
            path = _snapshot(repo_id, commit, token=token)
    return HubSnapshot(repo_id=repo_id, revision=revision, commit=path.name, path=path)
