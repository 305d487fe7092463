"""Alignment fine-tuning (`jlang finetune`): supervised training on multilingual pairs, all weights or
only chosen languages' neurons, resumable, with a Hugging Face export.

    finetune, FinetuneConfig, load_finetune_config   the run (jlang.train.sft)
    save_hf                                           jlang model -> HF directory (jlang.train.export_hf)
    pair_rows, translation_pairs                      the data (jlang.train.data)

Imported lazily, so `import jlang.train` costs nothing until a name is used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "finetune": "jlang.train.sft",
    "FinetuneConfig": "jlang.train.sft",
    "DataSection": "jlang.train.sft",
    "TrainSection": "jlang.train.sft",
    "load_finetune_config": "jlang.train.sft",
    "validate_config": "jlang.train.sft",
    "neuron_update_masks": "jlang.train.sft",
    "save_hf": "jlang.train.export_hf",
    "hf_config_dict": "jlang.train.export_hf",
    "ExportError": "jlang.train.export_hf",
    "pair_rows": "jlang.train.data",
    "translation_pairs": "jlang.train.data",
    "instruction_pairs": "jlang.train.data",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jlang.train' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
