"""Models: family descriptions, the one decoder, checkpoint sources and conversion."""

from jlang.models.decoder import AttnEdits, Decoder, Edits, forward
from jlang.models.families import FAMILIES, Family, ModelConfig, UnsupportedModelError, supported_architectures
from jlang.models.model import Model, load_model
from jlang.models.sources import CheckpointError

__all__ = [
    "FAMILIES",
    "AttnEdits",
    "CheckpointError",
    "Decoder",
    "Edits",
    "Family",
    "Model",
    "ModelConfig",
    "UnsupportedModelError",
    "forward",
    "load_model",
    "supported_architectures",
]
