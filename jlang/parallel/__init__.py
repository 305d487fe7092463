"""Parallelism: device meshes and logical-axis rules (`mesh`), several JAX processes (`distributed`).

`jlang.parallel.make_mesh`, `AXIS_RULES`, `to_host`, ... are `jlang.parallel.mesh`'s.
"""

from jlang.parallel.mesh import (
    AXES,
    AXIS_RULES,
    batch_sharding,
    logical_to_spec,
    make_mesh,
    named_sharding,
    pad_batch_to,
    replicated,
    to_host,
)

__all__ = [
    "AXES",
    "AXIS_RULES",
    "batch_sharding",
    "logical_to_spec",
    "make_mesh",
    "named_sharding",
    "pad_batch_to",
    "replicated",
    "to_host",
]
