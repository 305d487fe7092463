import os
import sys
from pathlib import Path

# Fake CPU devices for mesh tests; must be set before jax initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """family name -> (HF directory, torch model) for every tiny family model."""
    pytest.importorskip("torch")
    from tiny_models import family_configs, save_tiny

    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for name, config in family_configs().items():
        out[name] = (root / name, save_tiny(config, root / name))
    return out
