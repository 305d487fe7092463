"""Shared pieces of the benchmarks: models, tokens, timing, FLOP counts, matmul peak, host memory.

Everything here is framework-neutral or imports its framework lazily, so a
worker process that benchmarks PyTorch never builds a JAX model and vice versa
(their host-memory peaks stay attributable).

FLOP counting rule (`forward_flops_per_token`, `generation_flops`): matmul FLOPs
only, 2 per multiply-add, of the non-embedding weights (q, k, v, o, gate, up,
down of every layer), plus attention's two batched matmuls (scores `q·k` and
`probs·v`) over every key a dense implementation multiplies (the full sequence,
causal or not), plus the unembedding (`2 · d_model · vocab` per token) only for
the positions whose logits a row computes. The embedding lookup is a gather (0
FLOPs); norms, RoPE, softmax, GELU and the statistics reductions are not matmuls
and are not counted (they are the overhead that MFU exposes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- models

MODELS = ("default", "synthetic-1b")  # what `run_all.py` runs by default
SYNTHETIC_MODELS = ("synthetic-1b", "synthetic-tiny")

# Synthetic models: Gemma 3 family, random weights, built in memory, with the
# default model's switches (sandwich norms, q/k norm, GeGLU, 5 local : 1 global
# layers, head_dim 256, tied embeddings, vocabulary 262144).
# synthetic-1b is wider and deeper: 0.94 B non-embedding parameters, 1.34 B with
# the (tied) embedding. synthetic-tiny exists to smoke-test the benchmarks
# themselves in seconds (tests/test_benchmarks.py), not to be measured.
SYNTHETIC = {
    "synthetic-1b": dict(
        vocab_size=262144,
        hidden_size=1536,
        intermediate_size=6144,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=256,
        sliding_window=512,
    ),
    "synthetic-tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=8,
    ),
}


def synthetic_hf_config(name: str = "synthetic-1b"):
    """The `transformers` `Gemma3TextConfig` of a synthetic model (jlang reads the same config)."""
    from transformers import Gemma3TextConfig

    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic model {name!r}; known: {', '.join(SYNTHETIC)}")
    shape = SYNTHETIC[name]
    L = shape["num_hidden_layers"]
    return Gemma3TextConfig(
        architectures=["Gemma3ForCausalLM"],
        **shape,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        query_pre_attn_scalar=shape["head_dim"],
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(L)],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        },
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def load_jlang(name: str, *, dtype: str = "float32"):
    """A `jlang.Model`: a packaged model by name, or a synthetic one with random weights (no tokenizer)."""
    import jlang

    if not name.startswith("synthetic"):
        return jlang.load_model(name, dtype=dtype, progress=False)
    import jax.numpy as jnp
    from flax import nnx

    from jlang.models.decoder import Decoder
    from jlang.models.families import model_config_from_hf
    from jlang.models.model import Model

    cfg = model_config_from_hf(synthetic_hf_config(name))
    decoder = Decoder(cfg, rngs=nnx.Rngs(0), dtype=jnp.dtype(dtype))
    return Model(decoder, None, name=name, source="random weights (jlang Decoder init)", hf_config={})


def load_torch(name: str):
    """The `transformers` PyTorch model, float32, eval mode: from the packaged GGUF, or random (synthetic)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if name.startswith("synthetic"):
        from transformers import Gemma3ForCausalLM

        torch.manual_seed(0)
        return Gemma3ForCausalLM(synthetic_hf_config(name)).to(torch.float32).eval()
    from transformers import AutoModelForCausalLM

    from jlang.models.packaged import resolve_packaged

    path = resolve_packaged(name)
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def model_config(name: str):
    """jlang's `ModelConfig` of a benchmark model, without building its parameters."""
    from jlang.models.families import model_config_from_hf

    if name.startswith("synthetic"):
        return model_config_from_hf(synthetic_hf_config(name))
    from jlang.models.gguf import GGUFSource
    from jlang.models.packaged import resolve_packaged

    return model_config_from_hf(GGUFSource(resolve_packaged(name)).config)


def param_counts(cfg) -> dict[str, int]:
    """total, embedding (tied: counted once) and non-embedding parameters of `cfg`."""
    from jlang.models.decoder import param_shapes

    shapes = param_shapes(cfg)
    total = int(sum(np.prod(s) for s in shapes.values()))
    embedding = int(sum(np.prod(shapes[k]) for k in ("embed", "lm_head") if k in shapes))
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


# ----------------------------------------------------------------------------- tokens


def token_batches(vocab_size: int, count: int, batch: int, seq: int, seed: int = 0) -> np.ndarray:
    """int32 `[count, batch, seq]` uniform random token ids (ids 0-3 avoided: pad/eos/bos/unk)."""
    rng = np.random.default_rng(seed)
    return rng.integers(4, vocab_size, (count, batch, seq)).astype(np.int32)


def digest(a: np.ndarray) -> str:
    """A short hash of an array, recorded so the JSON shows both frameworks saw the same tokens."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def lape_like_mask(num_layers: int, num_neurons: int, fraction: float = 0.02, seed: int = 1) -> np.ndarray:
    """bool `[L, F]`: a random `fraction` of each layer's neurons (a LAPE-sized language mask)."""
    rng = np.random.default_rng(seed)
    return rng.random((num_layers, num_neurons)) < fraction


# ----------------------------------------------------------------------------- FLOPs


def matmul_flops_per_token(cfg, seq: int) -> float:
    """Non-embedding matmul FLOPs per token of a forward without unembedding:
    the projections (2 x weights) and attention's scores and values (full `seq` keys)."""
    return forward_flops_per_token(cfg, seq, unembed=False)


def _layer_projection_flops(cfg) -> float:
    d, f = cfg.d_model, cfg.d_ff
    hq, hkv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return 2 * (d * hq + 2 * d * hkv + hq * d + 3 * d * f)


def _attention_flops(cfg, keys: int) -> float:
    return 2 * 2 * keys * cfg.num_heads * cfg.head_dim


def unembed_flops_per_token(cfg) -> float:
    return 2 * cfg.d_model * cfg.vocab_size


def forward_flops_per_token(cfg, seq: int, *, unembed: bool = False) -> float:
    """Matmul FLOPs per token of a `[batch, seq]` forward (the module docstring's rule)."""
    per_layer = _layer_projection_flops(cfg) + _attention_flops(cfg, seq)
    return cfg.num_layers * per_layer + (unembed_flops_per_token(cfg) if unembed else 0.0)


def generation_flops(cfg, batch: int, prompt: int, new_tokens: int) -> float:
    """Matmul FLOPs of greedy generation of `new_tokens` after a `prompt`-token prefill, per batch.

    The prefill runs the prompt (attention over `prompt` keys) and unembeds its last
    position (the first new token); each of the `new_tokens - 1` decoding steps runs
    one token over `prompt + i` cached keys and unembeds it.
    """
    L, proj = cfg.num_layers, _layer_projection_flops(cfg)
    prefill = prompt * L * (proj + _attention_flops(cfg, prompt)) + unembed_flops_per_token(cfg)
    decode = sum(
        L * (proj + _attention_flops(cfg, prompt + i)) + unembed_flops_per_token(cfg) for i in range(1, new_tokens)
    )
    return batch * (prefill + decode)


def matmuls_alone(cfg):
    """A jittable `(params, x [batch, seq, d_model]) -> x`: the forward's counted matmuls and nothing else.

    Every layer's q, k, v, o, gate, up, down and attention's two batched
    matmuls over the full sequence, on the model's own stacked weights in the
    same layer loop as jlang's (a `lax.scan` over stacked weights, or an
    unrolled loop over `Model.unstacked_params` views), with only the adds
    and the multiply that chain them, and one scaling per sub-block that keeps
    the values finite (inf and NaN would make the timing meaningless): no norm
    weights, RoPE, mask, softmax, activation or statistics. Its time is the floor
    of any forward of this model with XLA's matmuls on this machine; `run_all.py`
    reports it beside the real rows.
    """
    import jax
    import jax.numpy as jnp

    H, G, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    names = ("q", "k", "v", "o", "gate", "up", "down")
    batch_dims = ((0,), (0,))

    def unit(h):  # [tokens, d] rows scaled to unit RMS
        return h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6)

    def layer(x, p):
        B, T, D = x.shape
        h = x.reshape(B * T, D)
        u = unit(h)

        def heads(y, n):  # [B*T, G*n*Dh] -> [B*G, T*n, Dh], as jlang's attention lays them out
            return y.reshape(B, T, G, n, Dh).transpose(0, 2, 1, 3, 4).reshape(B * G, T * n, Dh)

        q, k, v = heads(u @ p["q"], H // G), heads(u @ p["k"], 1), heads(u @ p["v"], 1)
        scores = jax.lax.dot_general(q, k, (((2,), (2,)), batch_dims))  # [B*G, T*H/G, T]
        z = jax.lax.dot_general(scores / T, v, (((2,), (1,)), batch_dims))  # [B*G, T*H/G, Dh]
        z = z.reshape(B, G, T, H // G, Dh).transpose(0, 2, 1, 3, 4).reshape(B * T, H * Dh)
        h = h + z @ p["o"]
        u = unit(h)
        h = h + ((u @ p["gate"]) * (u @ p["up"])) @ p["down"]
        return h.reshape(B, T, D), None

    def run(params, x):
        layers = {n: params["layers." + n] for n in names}
        if not isinstance(layers["q"], (list, tuple)):
            return jax.lax.scan(layer, x, layers)[0]
        for i in range(cfg.num_layers):  # per-layer views (jlang.models.model.layer_views)
            x, _ = layer(x, {n: v[i] for n, v in layers.items()})
        return x

    return run


# ----------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[int], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of `repeats` calls `fn(i)` after `warmup` untimed ones; `fn` must block until done."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return times


def median(xs) -> float:
    return float(statistics.median(xs))


# ----------------------------------------------------------------------------- matmul peak


def model_matmul_shapes(cfg, tokens: int) -> list[tuple[int, int, int]]:
    """`(m, k, n)` of the projections a forward of `tokens` tokens multiplies (q, k/v, o, gate/up, down)."""
    d, f = cfg.d_model, cfg.d_ff
    hq, hkv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return sorted({(tokens, d, hq), (tokens, d, hkv), (tokens, hq, d), (tokens, d, f), (tokens, f, d)})


def _best_rate(run, flop: float, repeats: int, rounds: int) -> float:
    """GFLOP/s of the best of `rounds` rounds of `repeats` back-to-back `run()` calls (after one warm-up)."""
    run()
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(repeats):
            run()
        best = max(best, flop * repeats / (time.perf_counter() - t) / 1e9)
    return best


def matmul_peak_gflops(
    n: int = 2048, shapes: list[tuple[int, int, int]] = (), repeats: int = 10, rounds: int = 3
) -> dict[str, float | dict]:
    """Measured float32 matmul throughput (GFLOP/s) of this machine, via XLA and via PyTorch.

    The best over an `n x n` square matmul and the given `(m, k, n)` shapes (the
    benchmarked models' own projections: on this CPU some run faster than any
    square size, and a peak below what the model's matmuls reach would put MFU
    above 100%). Each measurement is the best of `rounds` rounds of `repeats`
    back-to-back matmuls: the least disturbed by other processes, a peak and not
    a typical rate. `by_shape` holds every measurement.
    """
    import jax

    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    f = jax.jit(lambda x, y: x @ y)
    out: dict = {"xla": 0.0, "by_shape": {}}
    if torch is not None:
        out["torch"] = 0.0
    for m, k, n_ in [(n, n, n), *shapes]:
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n_), np.float32)
        flop = 2 * m * k * n_
        ja, jb = jax.numpy.asarray(a), jax.numpy.asarray(b)
        rates = {"xla": _best_rate(lambda ja=ja, jb=jb: f(ja, jb).block_until_ready(), flop, repeats, rounds)}
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            rates["torch"] = _best_rate(lambda ta=ta, tb=tb: ta @ tb, flop, repeats, rounds)
        out["by_shape"][f"{m}x{k}x{n_}"] = rates
        for fw, rate in rates.items():
            out[fw] = max(out[fw], rate)
    return out


# ----------------------------------------------------------------------------- host memory


def _status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_bytes() -> int:
    """Current resident set size of this process."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def max_rss_bytes() -> int:
    """Peak resident set size of this process since it started (`getrusage`)."""
    scale = 1 if platform.system() == "Darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS counter (Linux `clear_refs` 5), so `peak_rss_bytes` covers what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last `reset_peak_rss` (Linux `VmHWM`), else since the process started."""
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else max_rss_bytes()


# ----------------------------------------------------------------------------- the machine


def cpu_info() -> dict[str, Any]:
    """The CPU model and its vector-extension flags (timings on AVX-512 and AVX2-only machines differ)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return {"cpu_model": platform.processor(), "cpu_flags": []}
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    wanted = re.compile(r"^(avx.*|fma|f16c|amx.*|sse4_2)$")
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "cpu_flags": sorted(f for f in (flags.group(1).split() if flags else []) if wanted.match(f)),
    }


def machine_info() -> dict[str, Any]:
    import jax

    info = {
        **cpu_info(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "loadavg_1_5_15": list(os.getloadavg()),
    }
    try:
        import psutil

        info["memory_total_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import torch
        import transformers

        info["torch"] = torch.__version__
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def cpu_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have spent busy so far (`/proc/stat`), or None."""
    try:
        fields = open("/proc/stat").readline().split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished (waited-for) child processes."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def loadavg() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(threshold: float, max_wait: float, poll: float = 10.0) -> float:
    """Wait (at most `max_wait` s) until the 1-minute load average is below `threshold`; return it."""
    end = time.monotonic() + max_wait
    while loadavg() >= threshold and time.monotonic() < end:
        time.sleep(poll)
    return loadavg()


def asdict(x: Any) -> Any:
    return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x
