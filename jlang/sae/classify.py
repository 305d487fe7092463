"""Language identification from SAE-LAPE features (`scripts/classify.py`; methods.md §7.5), vs py3langid.

For an example (a sentence) and each language k with features F_k (`SAELapeFeatures`):

* **sae-count**: the number of (token, feature) pairs of the example where a
  feature of F_k fires (for TopK SAEs: is among the token's top k), summed
  over layers;
* **sae-min-max**: the sum over those pairs of the min-max-scaled activation
  `(a - min_f) / (max_f - min_f + 1e-6)`, with each feature's global min and
  max positive activation from the statistics.

The prediction is the argmax over languages; ties (and examples where no
language feature fires at all) go to the first language, as `torch.argmax`
does in the original. Metrics follow its `calculate_metrics`: accuracy, and
precision / recall / F1 per class and macro-averaged over the classes seen in
the labels or the predictions (scikit-learn's `zero_division=0`).

Both scores are functions of two per-example arrays, the count and the sum of
each feature's positive activations over the example's tokens (`counts`,
`sums` `[N, L, F]`), so they are tested on hand-made arrays; `classify`
computes those arrays from the model in one pass (`lape.row_feature_reductions`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jlang.evals.langid import Py3LangID
from jlang.io.report import new_figure, save_figure, write_json
from jlang.models.scoring import rows_from_token_lists
from jlang.sae.lape import SAELapeFeatures, row_feature_reductions
from jlang.sae.model import SAE, SAEError

METHODS = ("sae-count", "sae-min-max")
EPS = 1e-6  # the original's denominator guard


def language_scores(
    features: SAELapeFeatures, counts: np.ndarray, sums: np.ndarray | None = None, *, method: str = "sae-count"
) -> np.ndarray:
    """float64 `[N, K]` scores of N examples for the K languages of `features`.

    Args:
      counts: int `[N, L, F]`, tokens of each example where feature f of layer l fired.
      sums: float `[N, L, F]`, the sum of its positive activations over those tokens ("sae-min-max" only).
      method: "sae-count" or "sae-min-max".
    """
    if method not in METHODS:
        raise SAEError(f"method must be one of {METHODS}, got {method!r}")
    counts = np.asarray(counts)
    L, F = len(features.layers), features.num_features
    if counts.ndim != 3 or counts.shape[1:] != (L, F):
        raise SAEError(f"counts must be [N, L={L}, F={F}], got {counts.shape}")
    if method == "sae-min-max":
        if sums is None or np.shape(sums) != counts.shape:
            raise SAEError(f"sae-min-max needs sums shaped like counts {counts.shape}, got {np.shape(sums)}")
        sums = np.asarray(sums, np.float64)
    out = np.zeros((counts.shape[0], len(features.languages)), np.float64)
    for k in range(len(features.languages)):
        for i in range(L):
            ids = features.features[k][i]
            if len(ids) == 0:
                continue
            c = counts[:, i, ids].astype(np.float64)
            if method == "sae-count":
                out[:, k] += c.sum(axis=1)
            else:
                lo = features.min_active[k][i].astype(np.float64)
                hi = features.max_active[k][i].astype(np.float64)
                out[:, k] += ((sums[:, i, ids] - c * lo) / (hi - lo + EPS)).sum(axis=1)
    return out


def predict(scores: np.ndarray, languages: Sequence[str]) -> list[str]:
    """argmax over languages (the first on ties, as torch.argmax)."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != len(languages):
        raise SAEError(f"scores must be [N, {len(languages)}], got {scores.shape}")
    return [languages[i] for i in np.argmax(scores, axis=1)]


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict:
    """Accuracy and per-class / macro precision, recall and F1 over the classes in `y_true` or `y_pred`."""
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred) or not y_true:
        raise SAEError(f"need as many predictions as labels (and at least one), got {len(y_pred)} and {len(y_true)}")
    classes = sorted(set(y_true) | set(y_pred))
    t, p = np.asarray(y_true), np.asarray(y_pred)
    prec, rec, f1 = [], [], []
    for c in classes:
        tp = float(np.sum((t == c) & (p == c)))
        npred, ntrue = float(np.sum(p == c)), float(np.sum(t == c))
        pr = tp / npred if npred else 0.0
        rc = tp / ntrue if ntrue else 0.0
        prec.append(pr)
        rec.append(rc)
        f1.append(2 * pr * rc / (pr + rc) if pr + rc else 0.0)
    confusion = [[int(np.sum((t == a) & (p == b))) for b in classes] for a in classes]
    return {
        "classes": classes,
        "accuracy": float(np.mean(t == p)),
        "precision": prec,
        "recall": rec,
        "f1": f1,
        "precision_macro": float(np.mean(prec)),
        "recall_macro": float(np.mean(rec)),
        "f1_macro": float(np.mean(f1)),
        "confusion_matrix": confusion,
        "n": len(y_true),
    }


@dataclasses.dataclass
class ClassifyResult:
    """Metrics per classifier (`"sae-count"`, `"sae-min-max"`, `"py3langid"`) on the same examples."""

    languages: list[str]
    metrics: dict[str, dict]
    silent: int  # examples where no language's feature fired (their prediction is the first language)
    meta: dict = dataclasses.field(default_factory=dict)

    def table(self) -> str:
        lines = ["| classifier | accuracy | macro-F1 |", "|---|---:|---:|"]
        for name, m in self.metrics.items():
            lines.append(f"| {name} | {m['accuracy']:.4f} | {m['f1_macro']:.4f} |")
        return "\n".join(lines)

    def per_language_f1(self) -> str:
        names = list(self.metrics)
        lines = ["| language | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for lang in self.languages:
            row = []
            for n in names:
                m = self.metrics[n]
                row.append(f"{m['f1'][m['classes'].index(lang)]:.3f}" if lang in m["classes"] else "–")
            lines.append(f"| {lang} | " + " | ".join(row) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path` (`.json`): the languages, every classifier's metrics, the silent count, meta."""
        return write_json(path, self.to_dict())

    def plot(self, path: str | os.PathLike, names: Sequence[str] | None = None) -> Path:
        """Confusion matrices of the classifiers `names` (default: all) side by side (rows: true language)."""
        names = list(names or self.metrics)
        fig = new_figure(4.2 * len(names), 4.2)
        axes = [fig.add_subplot(1, len(names), i + 1) for i in range(len(names))]
        for ax, name in zip(axes, names):
            m = self.metrics[name]
            classes = m["classes"]
            conf = np.asarray(m["confusion_matrix"], np.float64)
            share = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
            ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
            ax.set_title(f"{name}\nacc {m['accuracy']:.3f}, macro-F1 {m['f1_macro']:.3f}", fontsize=9)
            ax.set_xlabel("predicted", fontsize=8)
        axes[0].set_ylabel("true", fontsize=8)
        return save_figure(fig, path)


def example_arrays(
    model, sae: SAE | Sequence[SAE], rows, *, batch_size: int = 16, skip_bos: bool = True, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(counts int32, sums float32) `[N, L, F]` of every row of `rows` (one example per row)."""
    saes = [sae] if isinstance(sae, SAE) else list(sae)
    n, L, F = len(rows), len(saes), saes[0].config.num_features
    counts, sums = np.zeros((n, L, F), np.int32), np.zeros((n, L, F), np.float32)

    def fold(idx: np.ndarray, r: dict[str, np.ndarray]) -> None:
        real = idx >= 0
        counts[idx[real]] = r["count"][real]
        sums[idx[real]] = r["sum"][real]

    row_feature_reductions(
        model, saes, rows, fold, batch_size=batch_size, skip_bos=skip_bos, progress=progress, desc="SAE language ID"
    )
    return counts, sums


def classify(
    model,
    sae: SAE | Sequence[SAE],
    features: SAELapeFeatures,
    texts: Mapping[str, Sequence[str]],
    *,
    batch_size: int = 16,
    skip_bos: bool = True,
    identifier=None,
    progress: bool = True,
    more_features: Mapping[str, SAELapeFeatures] | None = None,
) -> ClassifyResult:
    """sae-count and sae-min-max language ID of `texts` (language -> sentences), and a reference identifier.

    Args:
      texts: the examples, by true language; every language must be one of `features.languages`.
      identifier: `list[str] -> list[str]` (default: py3langid restricted to `features.languages`),
        run on the same sentences.
      more_features: other feature sets (name -> features of the same SAEs and languages, e.g. other
        identification settings) scored on the same model pass, as "sae-count (name)" / "sae-min-max (name)".
    """
    saes = [sae] if isinstance(sae, SAE) else list(sae)
    if [s.config.layer for s in saes] != list(features.layers):
        raise SAEError(
            f"the SAEs read layers {[s.config.layer for s in saes]} but the features are of layers {features.layers}"
        )
    unknown = [lang for lang in texts if lang not in features.languages]
    if unknown:
        raise SAEError(f"languages {unknown} have no SAE-LAPE features; the features know {features.languages}")
    labels, sentences = [], []
    for lang, items in texts.items():
        for t in items:
            labels.append(lang)
            sentences.append(t)
    if not sentences:
        raise SAEError("no sentences to classify")
    tok = model.tokenizer
    encoded = [tok(s)["input_ids"] for s in sentences]  # as the model reads text (BOS first)
    rows = rows_from_token_lists(encoded, [0] * len(encoded), [0] * len(encoded), pad_id=tok.pad_token_id or 0)
    counts, sums = example_arrays(model, saes, rows, batch_size=batch_size, skip_bos=skip_bos, progress=progress)
    metrics, silent = {}, {}
    for label, feats in {"": features, **(more_features or {})}.items():
        if feats.languages != features.languages or feats.layers != features.layers:
            raise SAEError(f"feature set {label!r} has other languages or layers than the main one")
        suffix = f" ({label})" if label else ""
        for method in METHODS:
            scores = language_scores(feats, counts, sums, method=method)
            if method == "sae-count":
                silent[label or "main"] = int(np.sum(scores.max(axis=1) == 0))
            metrics[method + suffix] = classification_metrics(labels, predict(scores, feats.languages))
    identify = identifier or Py3LangID(features.languages)
    name = getattr(identify, "name", "identifier")
    metrics[name] = classification_metrics(labels, identify(sentences))
    meta = {
        "examples": {lang: len(v) for lang, v in texts.items()},
        "identifier": name,
        "layers": list(features.layers),
        "skip_bos": skip_bos,
        "silent": silent,
    }
    return ClassifyResult(list(features.languages), metrics, silent["main"], meta)
