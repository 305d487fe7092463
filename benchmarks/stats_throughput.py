"""Throughput of jlang's statistics pass vs what a PyTorch user would write, side by side.

Same tokens through:
  * jlang: the jitted statistics pass (`jlang.stats.collect.run_stats`, no unembedding);
  * torch: the `transformers` model on the same GGUF, `model(ids)` with forward
    hooks on every `mlp.act_fn` counting `a > 0` (the LAPE-style baseline).
Prints tokens/s for both, the ratio, and the fraction of this machine's measured
matmul peak that jlang reaches (non-embedding matmul FLOPs), and writes JSON.

    python benchmarks/stats_throughput.py [--model default|synthetic-1b] [--batch 4] [--seq 256] [--batches 6]

`benchmarks/run_all.py` is the full comparison (every row, both baselines, memory);
this script is the quick look at the one row, in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_jlang, load_torch, matmul_flops_per_token, matmul_peak_gflops, model_matmul_shapes  # noqa: E402


def bench_jlang(model, batches) -> float:
    """Steady-state tokens/s of `run_stats`: the first batch (which carries the
    compilation) is excluded by timing from its host fold to the last one."""
    from jlang.stats.collect import run_stats

    stamps = []
    run_stats(
        model, batches[:1] + batches, 1, progress=False, on_batch=lambda i, acc: stamps.append(time.perf_counter())
    )
    return sum(b["ids"].size for b in batches) / (stamps[-1] - stamps[0])


def bench_torch(name: str, batches) -> float:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_torch(name)
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

    model = load_jlang(args.model)
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
    peak = matmul_peak_gflops(shapes=model_matmul_shapes(model.config, args.batch * args.seq))
    by_shape = peak.pop("by_shape")
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
        "matmul_gflops_by_shape": by_shape,
        "matmul_gflop_per_token": flops / 1e9,
        "jlang_mfu": jlang_tps * flops / 1e9 / best_peak,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    rows = [
        ("jlang statistics pass", f"{jlang_tps:,.0f} tok/s", f"{result['jlang_mfu']:.0%} of peak"),
        (
            "transformers + act_fn hooks",
            f"{torch_tps:,.0f} tok/s",
            f"{torch_tps * flops / 1e9 / best_peak:.0%} of peak",
        ),
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
