"""jlang vs `transformers` (PyTorch) on the same tokens: forward, statistics, edits, generation.

For each model (the packaged default, Gemma 3 270M; and `synthetic-1b`, a random
Gemma 3 model with 0.94 B non-embedding parameters built in memory), one worker
process per framework runs every row on the same token ids, and the parent
prints one table and writes `benchmarks/results/run_all.json`:

  row                      jlang                                 transformers (PyTorch)
  plain forward, logits    Model.logits(ids)                     model(ids).logits
  plain forward, hidden    Model.forward(ids, output="hidden")   model.model(ids, use_cache=False)
  statistics pass          jlang.stats.collect.run_stats               model(ids) + act_fn hooks counting a > 0
  statistics pass (bb)     (same)                                model.model(ids, use_cache=False) + hooks
  intervened forward       Model.logits(ids, edits=...)          jlang.torch.apply(model, edits); model(ids)
  generate b=1 / b=8       jlang.models.generate.generate (greedy)      model.generate(do_sample=False)

Tokens/s is the median over repeats after a warm-up; MFU is matmul FLOPs/s (rule
in `common.py`) over the machine's float32 matmul peak measured in the same run
(max of XLA and PyTorch); memory is each row's host peak RSS in its worker.

    python benchmarks/run_all.py                # both models (about 25 min on 2 cores)
    python benchmarks/run_all.py --quick        # default model only, fewer repeats (< 5 min)
    python benchmarks/run_all.py --models default,synthetic-1b --wait-quiet 1.5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "run_all.json"

# Per-model shapes. Forward rows: `repeats` calls of one [batch, seq] batch each
# (a different batch per call, the same batches in both frameworks).
SETTINGS = {
    "default": dict(batch=4, seq=256, repeats=8, gen_prompt=32, gen_new=32, gen_batches=[1, 8], gen_repeats=3),
    "synthetic-1b": dict(batch=2, seq=256, repeats=4, gen_prompt=32, gen_new=32, gen_batches=[1, 8], gen_repeats=2),
    "synthetic-tiny": dict(batch=2, seq=16, repeats=2, gen_prompt=4, gen_new=4, gen_batches=[1, 2], gen_repeats=1),
}
QUICK = {"default": dict(batch=2, repeats=2, gen_repeats=1)}
FRAMEWORKS = ("xla", "torch")  # the matmul peak is measured through both
NUM_LANGUAGES = 4  # the statistics pass sorts rows into this many languages (row i -> i % 4)
EDIT_FRACTION = 0.02  # the intervened forward deactivates (a = 0) this fraction of each layer's neurons

# (label, jlang row, torch row); generation rows are expanded per batch size.
PAIRS = [
    ("plain forward, logits", "forward_logits", "forward_logits"),
    ("plain forward, hidden (no unembed)", "forward_hidden", "forward_hidden"),
    ("matmuls alone (jlang's floor)", "matmuls_alone", None),
    ("stats pass vs model(ids)+hooks", "stats", "stats_logits"),
    ("stats pass vs model.model(ids)+hooks", "stats", "stats_hidden"),
    ("intervened forward, logits", "intervened", "intervened"),
]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ============================================================================ workers


def _row(what: str, seconds: list[float], tokens: int, flops: float, peak: int, **extra) -> dict:
    med = C.median(seconds)
    return {
        "what": what,
        "seconds": seconds,
        "median_s": med,
        "tokens_per_call": tokens,
        "tokens_per_s": tokens / med,
        "best_tokens_per_s": tokens / min(seconds),
        "gflop_per_call": flops / 1e9,
        "gflops_per_s": flops / med / 1e9,
        "best_gflops_per_s": flops / min(seconds) / 1e9,
        "peak_rss_bytes": peak,
        **extra,
    }


def _measure(name: str, fn):
    """Run `fn()` (-> row dict without memory) with the peak-RSS counter reset; attach the peak."""
    C.reset_peak_rss()
    t = time.perf_counter()
    row = fn()
    row["peak_rss_bytes"] = C.peak_rss_bytes()
    row["loadavg_after"] = C.loadavg()
    log(
        f"  {name}: {row['tokens_per_s']:,.1f} tok/s, peak {row['peak_rss_bytes'] / 2**30:.2f} GiB "
        f"({time.perf_counter() - t:.0f} s)"
    )
    return row


def worker_jlang(name: str, s: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from jlang import edits as E
    from jlang.models.generate import generate
    from jlang.models.model import Model
    from jlang.stats.collect import run_stats

    load_start, rss0 = time.perf_counter(), C.rss_bytes()
    model = C.load_jlang(name)
    jax.block_until_ready(model.params)
    load_s = time.perf_counter() - load_start
    rss_loaded = C.rss_bytes()
    cfg = model.config
    B, T, R = s["batch"], s["seq"], s["repeats"]
    toks = C.token_batches(cfg.vocab_size, R, B, T)
    f_logits = B * T * C.forward_flops_per_token(cfg, T, unembed=True)
    f_hidden = B * T * C.forward_flops_per_token(cfg, T)
    rows = {}

    def forward_logits():
        times = C.time_calls(lambda i: model.logits(toks[i % R]), R)
        return _row("Model.logits(ids) -> host float32 logits", times, B * T, f_logits, 0)

    def forward_hidden():
        def call(i):
            out, _ = model.forward(jnp.asarray(toks[i % R]), output="hidden")
            out.block_until_ready()

        return _row('Model.forward(ids, output="hidden")', C.time_calls(call, R), B * T, f_hidden, 0)

    def stats():
        lang = (np.arange(B) % NUM_LANGUAGES).astype(np.int32)
        batches = [{"ids": toks[i % R], "valid": np.ones((B, T), bool), "lang": lang} for i in range(R + 1)]
        stamps = []
        start = time.perf_counter()
        run_stats(
            model, batches, NUM_LANGUAGES, progress=False, on_batch=lambda i, acc: stamps.append(time.perf_counter())
        )
        # Batch 0 carries the compilation (run_stats jits its step per call); the
        # intervals between successive host folds are the steady-state batch times.
        times = list(np.diff(stamps))
        return _row(
            "jlang.stats.collect.run_stats (pipelined; per-batch interval between host folds)",
            times,
            B * T,
            f_hidden,
            0,
            first_batch_s=stamps[0] - start,
        )

    mask = C.lape_like_mask(cfg.num_layers, cfg.d_ff, EDIT_FRACTION)
    edits = E.deactivate(mask)

    floor = jax.jit(C.matmuls_alone(cfg))
    embedded = [jnp.take(model.params["embed"], jnp.asarray(t), axis=0) for t in toks]

    def matmuls_alone():
        def call(i):
            out = floor(model.unstacked_params(), embedded[i % R])  # the weights as run_stats reads them
            out.block_until_ready()
            if i == 0 and not bool(jnp.isfinite(out).all()):
                raise FloatingPointError("matmuls_alone produced inf/NaN: its timing would not be a floor")

        return _row(
            "the forward's matmuls alone (benchmarks/common.py matmuls_alone)",
            C.time_calls(call, R),
            B * T,
            f_hidden,
            0,
        )

    def intervened():
        times = C.time_calls(lambda i: model.logits(toks[i % R], edits=edits), R)
        return _row(
            "Model.logits(ids, edits=deactivate(mask))", times, B * T, f_logits, 0, edited_neurons=int(mask.sum())
        )

    for key, fn in [
        ("forward_logits", forward_logits),
        ("forward_hidden", forward_hidden),
        ("matmuls_alone", matmuls_alone),
        ("stats", stats),
        ("intervened", intervened),
    ]:
        rows[key] = _measure(key, fn)

    # Generation: no tokenizer and no EOS, so every row generates exactly gen_new tokens (as in the torch worker).
    gen_model = Model(model.decoder, None, name=model.name, source=model.source, hf_config={})
    P, N = s["gen_prompt"], s["gen_new"]
    prompts = C.token_batches(cfg.vocab_size, 1, max(s["gen_batches"]), P, seed=2)[0]
    for b in s["gen_batches"]:
        rows_b = [prompts[i] for i in range(b)]

        def gen(rows_b=rows_b, b=b):
            produced = []

            def call(i):
                out = generate(gen_model, rows_b, max_new_tokens=N, temperature=0.0)
                produced.append([len(t.split()) for t in out])

            times = C.time_calls(call, s["gen_repeats"])
            assert all(n == N for p in produced for n in p), f"jlang generated {produced}, expected {N} each"
            row = _row(
                "jlang.models.generate.generate(prompt ids, greedy)",
                times,
                b * N,
                C.generation_flops(cfg, b, P, N),
                0,
                batch=b,
                prompt=P,
                new_tokens=N,
            )
            row["tokens_per_s_per_seq"] = N / row["median_s"]
            return row

        rows[f"generate_b{b}"] = _measure(f"generate_b{b}", gen)

    return {
        "framework": "jlang",
        "model": name,
        "config": cfg.to_dict(),
        "params": C.param_counts(cfg),
        "dtype": model.dtype,
        "load_s": load_s,
        "rss_before_load_bytes": rss0,
        "rss_loaded_bytes": rss_loaded,
        "tokens_sha256": C.digest(toks),
        "prompts_sha256": C.digest(prompts),
        "rows": rows,
    }


def worker_torch(name: str, s: dict) -> dict:
    import torch

    import jlang.torch as bridge
    from jlang import edits as E

    torch.set_num_threads(os.cpu_count() or 1)
    load_start, rss0 = time.perf_counter(), C.rss_bytes()
    model = C.load_torch(name)
    load_s = time.perf_counter() - load_start
    rss_loaded = C.rss_bytes()
    cfg = C.model_config(name)
    B, T, R = s["batch"], s["seq"], s["repeats"]
    toks = C.token_batches(cfg.vocab_size, R, B, T)
    tt = [torch.from_numpy(t.astype(np.int64)) for t in toks]
    f_logits = B * T * C.forward_flops_per_token(cfg, T, unembed=True)
    f_hidden = B * T * C.forward_flops_per_token(cfg, T)
    layers = bridge.decoder_layers(model)
    rows = {}

    def forward_logits():
        times = C.time_calls(lambda i: model(tt[i % R]).logits, R)
        return _row("model(ids).logits", times, B * T, f_logits, 0)

    def forward_hidden():
        times = C.time_calls(lambda i: model.model(tt[i % R], use_cache=False).last_hidden_state, R)
        return _row("model.model(ids, use_cache=False).last_hidden_state", times, B * T, f_hidden, 0)

    def with_hooks(call, what, flops):
        def run():
            over_zero = torch.zeros(len(layers), cfg.d_ff, dtype=torch.int64)

            def hook(module, inputs, output, layer):
                over_zero[layer] += (output > 0).sum(dim=(0, 1))

            handles = [
                l.mlp.act_fn.register_forward_hook(lambda m, i, o, k=k: hook(m, i, o, k)) for k, l in enumerate(layers)
            ]
            try:
                times = C.time_calls(call, R)
            finally:
                for h in handles:
                    h.remove()
            return _row(what, times, B * T, flops, 0)

        return run

    mask = C.lape_like_mask(cfg.num_layers, cfg.d_ff, EDIT_FRACTION)
    edits = E.deactivate(mask)

    def intervened():
        with bridge.apply(model, edits):
            times = C.time_calls(lambda i: model(tt[i % R]).logits, R)
        return _row(
            "jlang.torch.apply(model, edits); model(ids).logits",
            times,
            B * T,
            f_logits,
            0,
            edited_neurons=int(mask.sum()),
        )

    with torch.inference_mode():
        for key, fn in [
            ("forward_logits", forward_logits),
            ("forward_hidden", forward_hidden),
            (
                "stats_logits",
                with_hooks(lambda i: model(tt[i % R]), "model(ids) + act_fn hooks (a > 0 counts)", f_logits),
            ),
            (
                "stats_hidden",
                with_hooks(
                    lambda i: model.model(tt[i % R], use_cache=False),
                    "model.model(ids, use_cache=False) + act_fn hooks (a > 0 counts)",
                    f_hidden,
                ),
            ),
            ("intervened", intervened),
        ]:
            rows[key] = _measure(key, fn)

        # Generation: greedy, exactly gen_new new tokens (EOS disabled, as in the jlang worker).
        P, N = s["gen_prompt"], s["gen_new"]
        prompts = C.token_batches(cfg.vocab_size, 1, max(s["gen_batches"]), P, seed=2)[0]
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        for b in s["gen_batches"]:
            ids = torch.from_numpy(prompts[:b].astype(np.int64))
            attn = torch.ones_like(ids)

            def gen(ids=ids, attn=attn, b=b):
                shapes = []

                def call(i):
                    out = model.generate(
                        input_ids=ids, attention_mask=attn, max_new_tokens=N, min_new_tokens=N, do_sample=False
                    )
                    shapes.append(tuple(out.shape))

                times = C.time_calls(call, s["gen_repeats"])
                assert all(sh == (b, P + N) for sh in shapes), f"torch generated {shapes}, expected {(b, P + N)}"
                row = _row(
                    "model.generate(ids, max_new_tokens, do_sample=False)",
                    times,
                    b * N,
                    C.generation_flops(cfg, b, P, N),
                    0,
                    batch=b,
                    prompt=P,
                    new_tokens=N,
                )
                row["tokens_per_s_per_seq"] = N / row["median_s"]
                return row

            rows[f"generate_b{b}"] = _measure(f"generate_b{b}", gen)

    return {
        "framework": "torch",
        "model": name,
        "torch_class": type(model).__name__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "num_threads": torch.get_num_threads(),
        "params": C.param_counts(cfg),
        "torch_params": int(sum(p.numel() for p in model.parameters())),
        "load_s": load_s,
        "rss_before_load_bytes": rss0,
        "rss_loaded_bytes": rss_loaded,
        "tokens_sha256": C.digest(toks),
        "prompts_sha256": C.digest(prompts),
        "rows": rows,
    }


def worker_peak(_name, s) -> dict:
    shapes = [
        shape
        for name, tokens in s.get("models", {}).items()
        for shape in C.model_matmul_shapes(C.model_config(name), tokens)
    ]
    peak = C.matmul_peak_gflops(n=s.get("n", 2048), shapes=sorted(set(shapes)))
    return {"framework": "peak", "matmul_peak_gflops": peak, "loadavg": C.loadavg()}


WORKERS = {"jlang": worker_jlang, "torch": worker_torch, "peak": worker_peak}


def run_worker(kind: str, name: str, settings: dict, args) -> dict:
    """Run one worker subprocess; retry it (`--retries`) if other processes used the CPU meanwhile.

    Other processes' CPU share = (the machine's busy CPU seconds - the worker's own)
    / (wall seconds x cores), from `/proc/stat` and `getrusage(RUSAGE_CHILDREN)`.
    """
    attempts = []
    for attempt in range(args.retries + 1):
        if args.wait_quiet is not None:
            load = C.wait_for_quiet(args.wait_quiet, args.max_wait)
            log(f"[load average {load:.2f}]")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                kind,
                "--model",
                name,
                "--settings",
                json.dumps(settings),
                "--result",
                str(out),
            ]
            log(f"$ {' '.join(cmd[1:6])} ...")
            start, load0 = time.perf_counter(), C.loadavg()
            busy0, own0 = C.cpu_busy_seconds(), C.children_cpu_seconds()
            proc = subprocess.run(cmd, stdout=sys.stderr)
            elapsed = time.perf_counter() - start
            busy1, own1 = C.cpu_busy_seconds(), C.children_cpu_seconds()
            foreign = None
            if busy0 is not None and busy1 is not None:
                foreign = max(0.0, (busy1 - busy0) - (own1 - own0)) / (elapsed * (os.cpu_count() or 1))
            if proc.returncode != 0 or not out.exists():
                result = {"framework": kind, "model": name, "error": f"worker exited with {proc.returncode}"}
            else:
                result = json.loads(out.read_text())
        result.update(wall_s=elapsed, loadavg_start=load0, loadavg_end=C.loadavg(), foreign_cpu_share=foreign)
        attempts.append(
            {k: result.get(k) for k in ("wall_s", "loadavg_start", "loadavg_end", "foreign_cpu_share", "error")}
        )
        log(
            f"[{kind} {name}: {elapsed:.0f} s; "
            f"other processes used {0 if foreign is None else foreign:.0%} of the CPU meanwhile]"
        )
        if "error" in result or foreign is None or foreign <= args.max_foreign or attempt == args.retries:
            break
        log(f"[retrying: other processes used more than {args.max_foreign:.0%} of the CPU]")
    result["attempts"] = attempts
    return result


# ============================================================================ report


def _fmt_tps(x):
    return "-" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:,.1f}")


def _fmt_pct(x):
    return "-" if x is None else f"{x:.0%}" if x >= 0.1 else f"{x:.1%}"


def _pct(x):
    return "?" if x is None else f"{x:.0%}"


def _gib(x):
    return "-" if x is None else f"{x / 2**30:.2f}"


def build_rows(j: dict, t: dict, peak: float, gen_batches) -> list[dict]:
    jr, tr = j.get("rows", {}), t.get("rows", {})
    out = []

    def add(label, jk, tk, metric="tokens_per_s"):
        a, b = jr.get(jk), tr.get(tk)
        ja = a.get(metric) if a else None
        tb = b.get(metric) if b else None
        out.append(
            {
                "row": label,
                "jlang_row": jk,
                "torch_row": tk,
                "jlang_what": a and a["what"],
                "torch_what": b and b["what"],
                "jlang_tokens_per_s": ja,
                "torch_tokens_per_s": tb,
                "ratio": ja / tb if ja and tb else None,
                "best_ratio": a["best_tokens_per_s"] / b["best_tokens_per_s"]
                if a and b and metric == "tokens_per_s"
                else None,
                "jlang_best_mfu": a["best_gflops_per_s"] / peak if a else None,
                "jlang_mfu": a["gflops_per_s"] / peak if a else None,
                "torch_mfu": b["gflops_per_s"] / peak if b else None,
                "jlang_peak_rss_bytes": a and a["peak_rss_bytes"],
                "torch_peak_rss_bytes": b and b["peak_rss_bytes"],
            }
        )

    for label, jk, tk in PAIRS:
        add(label, jk, tk)
    for b in gen_batches:
        k = f"generate_b{b}"
        if b == 1:
            add("generate b=1 (tok/s = per sequence)", k, k)
        else:
            add(f"generate b={b}, per sequence", k, k, "tokens_per_s_per_seq")
            add(f"generate b={b}, total", k, k)
    return out


def targets(j: dict, rows: list[dict], peak: float) -> list[dict]:
    """The issue's four targets: value, goal, met, and the jlang statistics tok/s each one needs.

    Beside each is the tok/s of the forward's matmuls alone (`matmuls_alone`), the
    floor no forward of this model can beat with XLA's matmuls on this machine:
    a target that needs more than the floor is out of reach by running faster,
    whatever the non-matmul code does.
    """
    by = {r["row"]: r for r in rows}
    users, backbone = by["stats pass vs model(ids)+hooks"], by["stats pass vs model.model(ids)+hooks"]
    jr = j.get("rows", {})
    stats, hidden = jr.get("stats"), jr.get("forward_hidden")
    overhead = best_overhead = need_overhead = need_mfu = None
    if stats and hidden:
        overhead = hidden["tokens_per_s"] / stats["tokens_per_s"] - 1
        best_overhead = hidden["best_tokens_per_s"] / stats["best_tokens_per_s"] - 1
        need_overhead = hidden["tokens_per_s"] / 1.05
    if stats:
        need_mfu = 0.85 * peak / (stats["gflop_per_call"] / stats["tokens_per_call"])
    needs = lambda goal, r: goal * r["torch_tokens_per_s"] if r["torch_tokens_per_s"] else None
    ratio, pct, signed = (lambda v: f"{v:.2f}x"), (lambda v: f"{v:.0%}"), (lambda v: f"{v:+.1%}")
    checks = [
        ("stats / torch model(ids)+hooks", users["ratio"], users["best_ratio"], ">=", 4.0, ratio, needs(4.0, users)),
        (
            "stats / torch model.model(ids)+hooks",
            backbone["ratio"],
            backbone["best_ratio"],
            ">=",
            1.4,
            ratio,
            needs(1.4, backbone),
        ),
        ("stats pass MFU", users["jlang_mfu"], users["jlang_best_mfu"], ">=", 0.85, pct, need_mfu),
        ("stats overhead over jlang hidden forward", overhead, best_overhead, "<", 0.05, signed, need_overhead),
    ]
    floor = jr.get("matmuls_alone", {}).get("tokens_per_s")
    out = []
    for name, value, best, op, goal, fmt, need in checks:
        ok = None if value is None else (value >= goal if op == ">=" else value < goal)
        out.append(
            {
                "target": name,
                "value": value,
                "best_of_repeats": best,
                "goal": f"{op} {fmt(goal)}",
                "met": ok,
                "shown": "-" if value is None else fmt(value),
                "shown_best": "-" if best is None else fmt(best),
                "needs_stats_tokens_per_s": need,
                "matmuls_alone_tokens_per_s": floor,
            }
        )
    return out


def print_report(result: dict) -> None:
    p = result["matmul_peak"]
    print(
        f"\nfloat32 matmul peak ({result['peak_n']}^2 and the models' projection shapes, best round): "
        + "; ".join(
            f"{k}: " + ", ".join(f"{f} {d[f]:.1f}" for f in FRAMEWORKS if f in d) + " GFLOP/s"
            for k, d in p["measured"].items()
        )
        + f"  -> peak used {p['gflops']:.1f} GFLOP/s ({p['best']})"
    )
    for name, m in result["models"].items():
        s, j, t = m["settings"], m["jlang"], m["torch"]
        params = j.get("params") or t.get("params") or {}
        print(
            f"\n== {name}: {params.get('total', 0) / 1e6:,.0f} M parameters "
            f"({params.get('non_embedding', 0) / 1e6:,.0f} M non-embedding), "
            f"float32; forwards [{s['batch']} x {s['seq']}] x {s['repeats']} batches; "
            f"generation prompt {s['gen_prompt']} + "
            f"{s['gen_new']} new; same tokens: {j.get('tokens_sha256') == t.get('tokens_sha256')}"
        )
        for w in (j, t):
            if "error" in w:
                print(f"   {w['framework']} worker FAILED: {w['error']}")
        header = (
            f"{'row':<38} {'jlang tok/s':>11} {'torch tok/s':>11} {'ratio':>7} "
            f"{'jlang MFU':>9} {'torch MFU':>9} {'jlang GiB':>9} {'torch GiB':>9}"
        )
        print(header)
        print("-" * len(header))
        for r in m["rows"]:
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            print(
                f"{r['row']:<38} {_fmt_tps(r['jlang_tokens_per_s']):>11} "
                f"{_fmt_tps(r['torch_tokens_per_s']):>11} {ratio:>7} "
                f"{_fmt_pct(r['jlang_mfu']):>9} {_fmt_pct(r['torch_mfu']):>9} "
                f"{_gib(r['jlang_peak_rss_bytes']):>9} {_gib(r['torch_peak_rss_bytes']):>9}"
            )
        print(
            f"(loaded model RSS: jlang {_gib(j.get('rss_loaded_bytes'))} GiB, "
            f"torch {_gib(t.get('rss_loaded_bytes'))} GiB; "
            f"process peak: jlang {_gib(j.get('max_rss_bytes'))} GiB, torch {_gib(t.get('max_rss_bytes'))} GiB; "
            f"other processes' CPU share during the workers: jlang {_pct(j.get('foreign_cpu_share'))}, "
            f"torch {_pct(t.get('foreign_cpu_share'))})"
        )
        first = j.get("rows", {}).get("stats", {}).get("first_batch_s")
        if first is not None:
            print(f"(jlang run_stats first batch incl. compilation: {first:.1f} s)")
        print(
            "targets"
            + (" (set for the default model)" if name != "default" else "")
            + ": medians of the repeats; [best] from each row's fastest repeat "
            "(this VM's neighbours only ever slow a call down)"
        )
        for c in m["targets"]:
            mark = "n/a" if c["met"] is None else ("met" if c["met"] else "NOT met")
            need, floor = c["needs_stats_tokens_per_s"], c["matmuls_alone_tokens_per_s"]
            beside = (
                ""
                if need is None
                else f"; needs {_fmt_tps(need)} tok/s"
                + ("" if floor is None else f", matmuls alone run at {_fmt_tps(floor)}")
            )
            print(
                f"  {c['target']:<42} {c['shown']:>8} [best {c['shown_best']:>6}]  (goal {c['goal']})  {mark}{beside}"
            )


# ============================================================================ main


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(C.MODELS), help=f"comma-separated, from {', '.join(C.MODELS)}")
    p.add_argument("--quick", action="store_true", help="default model only, smaller batches, fewer repeats")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting for every model, e.g. --set batch=8 --set repeats=3 (keys: "
        + ", ".join(SETTINGS["default"])
        + ")",
    )
    p.add_argument("--peak-n", type=int, default=2048, help="size of the square float32 matmul that measures the peak")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="LOAD",
        help="before each worker, wait until the 1-min load average is below LOAD",
    )
    p.add_argument("--max-wait", type=float, default=900.0, help="longest wait for --wait-quiet (s)")
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        help="re-run a worker (up to this many times) if other processes used > --max-foreign of the CPU",
    )
    p.add_argument("--max-foreign", type=float, default=0.10, help="see --retries (a fraction of all cores)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:  # a child process: one framework, one model
        result = WORKERS[args.worker](args.model, json.loads(args.settings or "{}"))
        result["max_rss_bytes"] = C.max_rss_bytes()
        Path(args.result).write_text(json.dumps(result, default=C.asdict))
        return None

    models = ["default"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - set(SETTINGS)
    if unknown:
        p.error(f"unknown models {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in SETTINGS["default"]:
            p.error(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(SETTINGS['default'])}")
        overrides[key] = json.loads(value) if key == "gen_batches" else int(value)
    start = time.time()
    machine = C.machine_info()
    run = lambda kind, name="-", settings=None: run_worker(kind, name, settings or {}, args)
    all_settings = {
        name: {**SETTINGS[name], **(QUICK.get(name, {}) if args.quick else {}), **overrides} for name in models
    }
    peak_settings = {"n": args.peak_n, "models": {name: st["batch"] * st["seq"] for name, st in all_settings.items()}}
    peaks = [run("peak", settings=peak_settings)]
    per_model = {}
    for name in models:
        settings = all_settings[name]
        per_model[name] = {
            "settings": settings,
            "jlang": run("jlang", name, settings),
            "torch": run("torch", name, settings),
        }
    peaks.append(run("peak", settings=peak_settings))

    measured = {f"{'start' if i == 0 else 'end'}": w.get("matmul_peak_gflops", {}) for i, w in enumerate(peaks)}
    candidates = [
        (rates[f], f"{f}, {shape}, {when}")
        for when, d in measured.items()
        for shape, rates in d.get("by_shape", {}).items()
        for f in FRAMEWORKS
        if f in rates
    ]
    best, best_what = max(candidates, default=(float("nan"), "not measured"))
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "peak_n": args.peak_n,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)),
        "wall_s": None,
        "machine": machine,
        "flop_rule": C.__doc__.split("FLOP counting rule")[1].strip(),
        "matmul_peak": {
            "measured": measured,
            "gflops": best,
            "best": best_what,
            "loadavg": [w.get("loadavg") for w in peaks],
        },
        "models": {},
    }
    for name, m in per_model.items():
        rows = build_rows(m["jlang"], m["torch"], best, m["settings"]["gen_batches"])
        result["models"][name] = {**m, "rows": rows, "targets": targets(m["jlang"], rows, best)}
    result["wall_s"] = time.time() - start
    print_report(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=C.asdict))
    print(f"\nwrote {out} ({result['wall_s'] / 60:.1f} min)")
    return result


if __name__ == "__main__":
    main()
