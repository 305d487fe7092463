"""Language identification of generated text, and the identifier's own accuracy.

The default identifier is py3langid (a NumPy port of langid.py, Lui & Baldwin
2012, whose model ships inside the PyPI package), restricted to the study's
languages (`set_languages`), as Language Arithmetics restricts fastText's
`lid.176.bin` output by comparing with the activated language (methods.md §5.5).
Texts with no letter at all (empty or whitespace/digit-only generations) are
labelled `"none"` and never count as a success.

An identifier is any callable `list[str] -> list[str]`, so tests and other
identifiers (fastText, lingua) plug in the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = ["Identifier", "NO_LANGUAGE", "Py3LangID", "identifier_accuracy"]

NO_LANGUAGE = "none"
Identifier = Callable[[Sequence[str]], list[str]]


def _has_letter(text: str) -> bool:
    return any(c.isalpha() for c in text)


class Py3LangID:
    """py3langid restricted to `languages` (ISO 639-1 codes); `__call__(texts) -> codes`.

    One instance per use (no module-level state): `set_languages` mutates the identifier.
    """

    name = "py3langid"

    def __init__(self, languages: Sequence[str]):
        try:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("language identification needs py3langid: pip install py3langid") from e
        self._lid = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        known = set(self._lid.labels)
        unknown = [l for l in languages if l not in known]
        if unknown:
            raise ValueError(f"py3langid does not know {unknown}; it knows {sorted(known)}")
        self.languages = list(languages)
        self._lid.set_languages(self.languages)

    def __call__(self, texts: Sequence[str]) -> list[str]:
        return [self._lid.classify(t)[0] if _has_letter(t) else NO_LANGUAGE for t in texts]


def identifier_accuracy(identify: Identifier, texts: Mapping[str, Sequence[str]]) -> dict:
    """Accuracy of `identify` on texts of known language.

    Args:
      identify: `list[str] -> list[str]`.
      texts: language -> texts in that language (e.g. the held-out sentences).
    Returns:
      {"per_language": {lang: accuracy}, "macro": mean of those, "micro": over all texts,
       "confusion": {true: {predicted: count}}, "n": {lang: count}}.
    """
    per, confusion, n = {}, {}, {}
    correct = total = 0
    for lang, items in texts.items():
        items = list(items)
        pred = identify(items) if items else []
        hits = sum(p == lang for p in pred)
        per[lang] = hits / len(items) if items else float("nan")
        n[lang] = len(items)
        conf: dict[str, int] = {}
        for p in pred:
            conf[p] = conf.get(p, 0) + 1
        confusion[lang] = dict(sorted(conf.items(), key=lambda kv: -kv[1]))
        correct, total = correct + hits, total + len(items)
    values = [v for v in per.values() if v == v]
    return {
        "per_language": per,
        "macro": float(np.mean(values)) if values else float("nan"),
        "micro": correct / total if total else float("nan"),
        "confusion": confusion,
        "n": n,
    }
