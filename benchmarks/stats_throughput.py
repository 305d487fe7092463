"""Throughput of jlang's statistics pass vs what a PyTorch user would write, side by side.

Same tokens through:
  * jlang: the jitted statistics pass (`jlang.collect.run_stats`, no unembedding);
  * torch: the `transformers` model on the same GGUF, `model(ids)` with forward
    hooks on every `mlp.act_fn` counting `a > 0` (the LAPE-style baseline).
Prints tokens/s for both, the ratio, and the fraction of this machine's measured
matmul peak that jlang reaches (non-embedding matmul FLOPs), and writes JSON.

    python benchmarks/stats_throughput.py [--model default] [--batch 4] [--seq 256] [--batches 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Measured float32 matmul throughput of this machine, via XLA and via PyTorch."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(repeats):
        f(a).block_until_ready()
    xla = 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9
    out = {"xla": xla}
    try:
        import torch

        x = torch.ones(n, n)
        x @ x
        t = time.perf_counter()
        for _ in range(repeats):
            x @ x
        out["torch"] = 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9
    except ImportError:
        pass
    return out


def matmul_flops_per_token(cfg, seq: int) -> float:
    """Non-embedding matmul FLOPs per token of a forward without unembedding:
    the projections (2 x weights) and attention's scores and values (full `seq` keys)."""
    d, f, L = cfg.d_model, cfg.d_ff, cfg.num_layers
    hq, hkv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    projections = 2 * (d * hq + 2 * d * hkv + hq * d + 3 * d * f)
    attention = 2 * 2 * seq * hq
    return L * (projections + attention)


def bench_jlang(model, batches) -> float:
    from jlang.collect import run_stats

    run_stats(model, batches[:1], 1, progress=False)  # compile
    t = time.perf_counter()
    acc = run_stats(model, batches, 1, progress=False)
    elapsed = time.perf_counter() - t
    return int(acc.tokens.sum()) / elapsed


def bench_torch(name: str, batches) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from jlang.models.packaged import resolve_packaged

    torch.set_num_threads(os.cpu_count() or 1)
    path = resolve_packaged(name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    layers = model.model.layers
    over_zero = torch.zeros(len(layers), model.config.intermediate_size, dtype=torch.int64)

    def hook(module, inputs, output, layer):
        over_zero[layer] += (output > 0).sum(dim=(0, 1))

    handles = [l.mlp.act_fn.register_forward_hook(lambda m, i, o, l=k: hook(m, i, o, l)) for k, l in enumerate(layers)]
    with torch.no_grad():
        model(torch.tensor(batches[0]["ids"]))  # warm up
        t = time.perf_counter()
        for b in batches:
            model(torch.tensor(b["ids"]))
        elapsed = time.perf_counter() - t
    for h in handles:
        h.remove()
    return sum(b["ids"].size for b in batches) / elapsed


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "stats_throughput.json"))
    args = p.parse_args(argv)

    import jlang

    model = jlang.load_model(args.model, progress=False)
    rng = np.random.default_rng(0)
    batches = [
        {
            "ids": rng.integers(0, model.config.vocab_size, (args.batch, args.seq)).astype(np.int32),
            "valid": np.ones((args.batch, args.seq), bool),
            "lang": np.zeros(args.batch, np.int32),
        }
        for _ in range(args.batches)
    ]
    jlang_tps = bench_jlang(model, batches)
    torch_tps = bench_torch(args.model, batches)
    peak = matmul_peak_gflops()
    flops = matmul_flops_per_token(model.config, args.seq)
    best_peak = max(peak.values())
    result = {
        "model": args.model,
        "batch": args.batch,
        "seq": args.seq,
        "tokens": args.batch * args.seq * args.batches,
        "jlang_stats_tokens_per_s": jlang_tps,
        "torch_hooks_tokens_per_s": torch_tps,
        "ratio_jlang_over_torch": jlang_tps / torch_tps,
        "matmul_peak_gflops": peak,
        "matmul_gflop_per_token": flops / 1e9,
        "jlang_mfu": jlang_tps * flops / 1e9 / best_peak,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    rows = [
        ("jlang statistics pass", f"{jlang_tps:,.0f} tok/s", f"{result['jlang_mfu']:.0%} of peak"),
        ("transformers + act_fn hooks", f"{torch_tps:,.0f} tok/s", f"{torch_tps * flops / 1e9 / best_peak:.0%} of peak"),
        ("ratio jlang / torch", f"{result['ratio_jlang_over_torch']:.2f}x", ""),
        ("matmul peak (f32)", ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()), ""),
    ]
    for r in rows:
        print(f"{r[0]:<30} {r[1]:>28} {r[2]:>14}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
