"""Where the statistics pass spends its time: a profile split into matmuls and everything else.

Traces a few steps of jlang's jitted statistics step (and, to compare, the
hidden forward and the forward's matmuls alone, `common.matmuls_alone`) with
`jax.profiler`, reads XLA's per-op events from the Perfetto trace and the
compiled HLO, and accounts each step's wall time to

* **matmul**: at least one matmul (a dot, or a fusion around one) running;
* **other only**: only non-matmul ops running (norms, RoPE, softmax, GELU,
  the statistics' reductions, weight slices, copies) -- the time a faster
  non-matmul path could win back;
* **idle**: no XLA op running (dispatch, host work).

XLA:CPU runs independent ops concurrently, so per-op durations overlap; the
"alone" column counts only the part of an op's time when no matmul ran. The
matmul rate is the counted matmul FLOPs (`common.py` rule) over the time a
matmul was running: next to the machine's peak it says whether the matmuls
themselves are fast.

    python benchmarks/profile_stats.py                      # default model, [4 x 256]
    python benchmarks/profile_stats.py --batch 8 --steps 2 --top 20
"""

from __future__ import annotations

import argparse
import bisect
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

NOT_OPS = {"while", "call", "conditional", "tuple", "get-tuple-element", "parameter", "constant", "bitcast"}


def hlo_ops(hlo_text: str) -> dict[str, dict]:
    """Instruction name -> {opcode, matmul, what} for every instruction of an optimized HLO module."""
    bodies = dict(re.findall(r"^%?(\S+) \([^\n]*\{\n(.*?)\n\}", hlo_text, re.S | re.M))
    ops = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%(\S+) = \S+(?: \S+)*? ([a-z][a-z0-9-]*)\((.*)$", hlo_text, re.M):
        name, opcode, rest = m.groups()
        called = re.search(r"calls=%([\w.\-]+)", rest)
        body = bodies.get(called.group(1), "") if called else ""
        matmul = opcode in ("dot", "convolution") or " dot(" in body or " convolution(" in body
        what = re.search(r'op_name="([^"]*)"', rest)
        ops[name] = {"opcode": opcode, "matmul": matmul, "what": what.group(1).split("/")[-1] if what else opcode}
    return ops


def merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def covered(merged: list[tuple[float, float]]) -> float:
    return sum(e - s for s, e in merged)


def overlap(s: float, e: float, merged: list[tuple[float, float]], starts: list[float]) -> float:
    """Length of [s, e) covered by the sorted, disjoint `merged` intervals."""
    i, total = max(bisect.bisect_right(starts, s) - 1, 0), 0.0
    while i < len(merged) and merged[i][0] < e:
        total += max(0.0, min(e, merged[i][1]) - max(s, merged[i][0]))
        i += 1
    return total


def account(events: list[dict], ops: dict[str, dict], wall_us: float, steps: int, flops_per_step: float) -> dict:
    """Split traced op events into matmul / other-only / idle time (see the module docstring)."""
    events = [e for e in events if e["name"] in ops and ops[e["name"]]["opcode"] not in NOT_OPS]
    spans = lambda es: [(e["ts"], e["ts"] + e["dur"]) for e in es]
    matmul = merge(spans([e for e in events if ops[e["name"]]["matmul"]]))
    anything = merge(spans(events))
    starts = [s for s, _ in matmul]
    per_op = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for e in events:
        if ops[e["name"]]["matmul"]:
            continue
        key = (ops[e["name"]]["what"], e["name"])
        alone = e["dur"] - overlap(e["ts"], e["ts"] + e["dur"], matmul, starts)
        per_op[key][0] += e["dur"]
        per_op[key][1] += alone
        per_op[key][2] += 1
    matmul_us, any_us = covered(matmul), covered(anything)
    top = sorted(per_op.items(), key=lambda kv: -kv[1][1])
    return {
        "wall_ms_per_step": wall_us / steps / 1e3,
        "matmul_fraction": matmul_us / wall_us,
        "other_only_fraction": (any_us - matmul_us) / wall_us,
        "idle_fraction": max(0.0, 1 - any_us / wall_us),
        "matmul_gflops_while_running": flops_per_step * steps / (matmul_us / 1e6) / 1e9 if matmul_us else None,
        "gflops_per_s": flops_per_step * steps / (wall_us / 1e6) / 1e9,
        "other_ops": [
            {
                "op": name,
                "what": what,
                "ms_per_step": t / steps / 1e3,
                "alone_ms_per_step": a / steps / 1e3,
                "calls_per_step": n / steps,
            }
            for (what, name), (t, a, n) in top
        ],
    }


def trace(fn, args, steps: int) -> tuple[list[dict], float]:
    """Run `fn(*args)` `steps` times under the profiler -> (op events, wall microseconds)."""
    import jax

    jax.block_until_ready(fn(*args))  # warm (compiled already; first-run allocations)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(steps):
                jax.block_until_ready(fn(*args))
            wall = (time.perf_counter() - start) * 1e6
        path = glob.glob(f"{tmp}/**/perfetto_trace.json.gz", recursive=True)
        if not path:
            raise RuntimeError("jax.profiler wrote no perfetto_trace.json.gz; is this jax's CPU profiler?")
        events = [e for e in json.load(gzip.open(path[0]))["traceEvents"] if e.get("ph") == "X"]
    return events, wall


def profile(model_name: str, batch: int, seq: int, steps: int, num_languages: int = 4) -> dict:
    import jax
    import jax.numpy as jnp

    from jlang.models.decoder import forward
    from jlang.stats.collect import stats_step

    model = C.load_jlang(model_name)
    cfg, params = model.config, model.unstacked_params()  # what run_stats runs on
    ids = jnp.asarray(C.token_batches(cfg.vocab_size, 1, batch, seq)[0])
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    valid = jnp.ones((batch, seq), bool)
    lang = jnp.arange(batch, dtype=jnp.int32) % num_languages
    flops = batch * seq * C.forward_flops_per_token(cfg, seq)
    hidden = jax.jit(lambda p, i: forward(p, i, cfg, output="hidden")[0])
    embedded = jnp.take(params["embed"], ids, axis=0)
    runs = {
        "stats": (jax.jit(stats_step(model, num_languages)), (params, ids, positions, valid, lang)),
        "hidden": (hidden, (params, ids)),
        "matmuls_alone": (jax.jit(C.matmuls_alone(cfg)), (params, embedded)),
    }
    out = {"model": model_name, "batch": batch, "seq": seq, "steps": steps, "gflop_per_step": flops / 1e9, "runs": {}}
    for name, (fn, args) in runs.items():
        compiled = fn.lower(*args).compile()
        events, wall = trace(compiled, args, steps)
        out["runs"][name] = account(events, hlo_ops(compiled.as_text()), wall, steps, flops)
    return out


def print_profile(result: dict, top: int) -> None:
    print(
        f"\n{result['model']}, [{result['batch']} x {result['seq']}], "
        f"{result['gflop_per_step']:.1f} GFLOP of counted matmuls per step, "
        f"{result['steps']} traced steps"
    )
    print(
        f"{'run':<15} {'ms/step':>8} {'GFLOP/s':>8} {'matmul':>7} {'other only':>10} {'idle':>6} "
        f"{'matmul GFLOP/s while running':>29}"
    )
    for name, r in result["runs"].items():
        rate = r["matmul_gflops_while_running"]
        print(
            f"{name:<15} {r['wall_ms_per_step']:>8.0f} {r['gflops_per_s']:>8.1f} {r['matmul_fraction']:>7.1%} "
            f"{r['other_only_fraction']:>10.1%} {r['idle_fraction']:>6.1%} {'-' if rate is None else f'{rate:.1f}':>29}"
        )
    for name in ("stats", "hidden"):
        r = result["runs"][name]
        print(f"\n{name}: non-matmul ops by time when no matmul ran (ms per step)")
        print(f"  {'alone':>7} {'total':>7} {'calls':>5}  op (jax op)")
        for o in r["other_ops"][:top]:
            print(
                f"  {o['alone_ms_per_step']:>7.1f} {o['ms_per_step']:>7.1f} {o['calls_per_step']:>5.0f}  "
                f"{o['op']} ({o['what']})"
            )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help=f"default, smollm2 or one of {', '.join(C.SYNTHETIC)}")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="traced steps per run (after a warm-up)")
    p.add_argument("--top", type=int, default=15, help="non-matmul ops to list")
    p.add_argument("--peak", action="store_true", help="also measure the machine's float32 matmul peak")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "profile_stats.json"))
    args = p.parse_args(argv)
    result = profile(args.model, args.batch, args.seq, args.steps)
    if args.peak:
        shapes = C.model_matmul_shapes(C.model_config(args.model), args.batch * args.seq)
        result["matmul_peak_gflops"] = C.matmul_peak_gflops(shapes=shapes)
    result["machine"] = C.machine_info()
    print_profile(result, args.top)
    if args.peak:
        peak = result["matmul_peak_gflops"]
        print(
            "\nmatmul peak (2048^2 and the model's projections): "
            + ", ".join(f"{k} {peak[k]:.1f}" for k in ("xla", "torch") if k in peak)
            + " GFLOP/s"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
