"""Host memory of loading a safetensors checkpoint: each process's peak RSS growth against the checkpoint size.

    python benchmarks/load_memory.py                       # prints a table, writes benchmarks/results/load_memory.json
    PYTHONPATH=/path/to/old/jlang python benchmarks/load_memory.py --out old.json   # the same for another jlang

Cases (a synthetic Llama checkpoint of >= 1 GB in float32, written once and reused):
  mesh   2 `jax.distributed` processes on 127.0.0.1, 4 fake CPU devices each, a `model=8` mesh:
         each process holds half of the weights. Target: peak RSS growth <= 0.6x the checkpoint (its half + 20%).
  single 1 process, 1 device: it holds all of the weights. Target: <= 1.25x.

Peak RSS growth = the process's peak resident set (Linux `VmHWM`, after a reset) during `jlang.load_model`
minus its resident set just before, with JAX and its devices initialised and the modules a load imports
already imported (jlang's loader with flax and orbax, transformers with torch when torch is installed, the
model's config class: ~0.4 GB that does not grow with the checkpoint). Memory-mapped file pages a process
touches count in its RSS, as they should (they are what a host must have free).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import common as C
import numpy as np

HERE = Path(__file__).resolve().parent
# Llama-2 shapes scaled down: 4 layers, hidden 2048, 16 heads / 8 kv heads of 128, MLP 5632, vocabulary 32000.
CONFIG = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=4,
    num_attention_heads=16,
    num_key_value_heads=8,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    torch_dtype="float32",
)


def checkpoint_tensors(cfg: dict) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every tensor of a Llama checkpoint with `cfg`."""
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * d // cfg["num_attention_heads"]
    out = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (d, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        }
    return out


def write_checkpoint(path: Path) -> int:
    """Write the synthetic checkpoint (two safetensors files and an index) unless it is there; return its bytes."""
    from safetensors.numpy import save_file

    shapes = checkpoint_tensors(CONFIG)
    if not (path / "model.safetensors.index.json").is_file():
        path.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        names = list(shapes)
        halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        weight_map = {}
        for file, part in halves.items():
            tensors = {n: (0.02 * rng.standard_normal(shapes[n], np.float32)) for n in part}
            for n in part:
                if n.endswith("norm.weight"):
                    tensors[n] = np.ones(shapes[n], np.float32)
            save_file(tensors, str(path / file), metadata={"format": "pt"})
            weight_map |= dict.fromkeys(part, file)
            del tensors
        (path / "config.json").write_text(json.dumps(CONFIG, indent=1))
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def worker(path: str, process_id: int, num_processes: int, port: int) -> dict:
    """Load the checkpoint in this process and measure its RSS growth (the body of one benchmark process)."""
    import jax

    if num_processes > 1:
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)
    import jlang

    mesh = jlang.parallel.make_mesh(data=1, model=jax.device_count()) if jax.device_count() > 1 else None
    jax.numpy.zeros(8).block_until_ready()  # the devices are up before the baseline
    from transformers import AutoConfig

    # Imports before the baseline (~0.4 GB that does not grow with the checkpoint): jlang's loader (flax,
    # orbax), transformers (and torch, which it imports when installed) and the model's config class.
    jlang.models.model.load_model  # noqa: B018 (jlang's API is lazy: this imports the loader)
    AutoConfig.from_pretrained(path)

    before = C.rss_bytes()
    C.reset_peak_rss()
    t = time.perf_counter()
    model = jlang.load_model(path, mesh=mesh, progress=False)
    seconds = time.perf_counter() - t
    peak = C.peak_rss_bytes()
    held = sum(shard.data.nbytes for p in model.params.values() for shard in p.addressable_shards)
    return {
        "process": process_id,
        "devices_here": jax.local_device_count(),
        "rss_before_bytes": before,
        "peak_rss_bytes": peak,
        "peak_growth_bytes": peak - before,
        "param_bytes_held": held,
        "load_seconds": seconds,
        "jlang": str(Path(jlang.__file__).parent),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(path: Path, processes: int, devices_per_process: int) -> list[dict]:
    """Launch the worker processes of one case and collect their reports."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    cmd = [sys.executable, __file__, "--worker", str(path), "--processes", str(processes), "--port", str(port)]
    procs = [
        subprocess.Popen([*cmd, "--process-id", str(i)], env=env, stdout=subprocess.PIPE, text=True)
        for i in range(processes)
    ]
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"worker exited with {p.returncode}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


CASES = {  # name -> (processes, devices per process, target growth / checkpoint size)
    "mesh": (2, 4, 0.6),
    "single": (1, 1, 1.25),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="/tmp/jlang-bench-load-memory", help="where the checkpoint is kept")
    parser.add_argument("--out", default=str(HERE / "results" / "load_memory.json"))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.process_id, args.processes, args.port)))
        return
    path = Path(args.checkpoint)
    size = write_checkpoint(path)
    result = {"machine": C.machine_info(), "checkpoint_bytes": size, "config": CONFIG, "cases": {}}
    print(f"checkpoint: {size / 2**30:.2f} GiB float32 ({path})")
    header = (
        f"{'case':<8} {'process':>7} {'devices':>7} {'holds GiB':>9} {'peak growth GiB':>15} {'x ckpt':>7} "
        f"{'target':>7}"
    )
    print(header + f" {'load s':>7}")
    print("-" * (len(header) + 8))
    for name in args.cases:
        processes, devices, target = CASES[name]
        reports = run_case(path, processes, devices)
        for r in reports:
            r["ratio"] = r["peak_growth_bytes"] / size
            r["target"] = target
            r["met"] = r["ratio"] <= target
            print(
                f"{name:<8} {r['process']:>7} {r['devices_here']:>7} {r['param_bytes_held'] / 2**30:>9.2f} "
                f"{r['peak_growth_bytes'] / 2**30:>15.2f} {r['ratio']:>6.2f}x {target:>6.2f}x {r['load_seconds']:>7.1f}"
            )
        result["cases"][name] = reports
    print(
        f"jlang: {result['cases'][args.cases[0]][0]['jlang']}; CPU: {result['machine']['cpu_model']} "
        f"{' '.join(result['machine']['cpu_flags'])}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
