"""Alignment fine-tuning (`jlang finetune`): supervised training on multilingual pairs, all weights or
only chosen languages' neurons, resumable, with a Hugging Face export.

    finetune                                          the run (jlang.train.sft)
    FinetuneConfig, load_finetune_config              its config (jlang.train.config)
    neuron_update_masks                               what trains (jlang.train.step)
    save_hf                                           jlang model -> HF directory (jlang.models.export)
    pair_rows, translation_pairs                      the data (jlang.train.data)

Imported lazily, so `import jlang.train` costs nothing until a name is used.
"""

from __future__ import annotations

from jlang.lazy import lazy_exports

_EXPORTS = {
    "finetune": "jlang.train.sft",
    "FinetuneConfig": "jlang.train.config",
    "DataSection": "jlang.train.config",
    "TrainSection": "jlang.train.config",
    "load_finetune_config": "jlang.train.config",
    "validate_config": "jlang.train.config",
    "neuron_update_masks": "jlang.train.step",
    "save_hf": "jlang.models.export",
    "hf_config_dict": "jlang.models.export",
    "ExportError": "jlang.models.export",
    "pair_rows": "jlang.train.data",
    "translation_pairs": "jlang.train.data",
    "instruction_pairs": "jlang.train.data",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports("jlang.train", _EXPORTS)
