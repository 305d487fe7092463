"""Align the default model on a few languages, then compare it with the base model (ternary-neuron paper §3.5).

    python experiments/alignment_compare.py configs/alignment_compare.yaml
    python experiments/alignment_compare.py configs/alignment_compare.yaml --set compare.max_tokens_per_language=1000

Zhang et al. 2025 (NJUNLP/Language-Neurons-Alignment) compare a model's ternary
neurons before and after multilingual alignment and report "spontaneous
multilingual alignment": languages left out of alignment change too. Their
alignment (MAPO-style preference optimisation) and analysis code are not public;
here:

1. **Alignment** = `jlang finetune` (`jlang.train.finetune`) with the config named by
   `finetune.config` (default `configs/align_default.yaml`: supervised translation
   pairs English -> fr, es, de, zh from the default corpus's parallel held-out
   messages) and `finetune.overrides`. A finished checkpoint
   (`{finetune out}/checkpoint`) is reused when `finetune.reuse`.
2. **Comparison** = `jlang compare` (`jlang.analysis.compare.run.run_compare`) of the base
   model (`model.source` of the fine-tuning config) and the fine-tuned checkpoint on
   the same tokens, with the fine-tuning languages as the aligned set. The
   statistics and perplexities use the corpus's *train* split: the fine-tuning saw
   the held-out messages, so they would measure memorisation, not alignment.
3. `{out}/report.md` (fine-tuning summary + the comparison), `compare.json`, PNGs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

import yaml

from jlang import config as config_lib
from jlang.analysis.compare.run import CompareConfig, run_compare
from jlang.train.config import load_finetune_config
from jlang.train.sft import finetune


@dataclasses.dataclass(frozen=True)
class FinetuneSection:
    config: str = "configs/align_default.yaml"  # a `jlang finetune` config
    overrides: tuple[str, ...] = ()  # `key=value` overrides of that config (as `jlang finetune --set`)
    reuse: bool = True  # use {finetune out}/checkpoint when a finished run left it there


@dataclasses.dataclass(frozen=True)
class AlignmentCompareConfig:
    """`experiments/alignment_compare.py`: fine-tune on a few languages, then `jlang compare` base vs aligned.

    `compare.base`, `compare.aligned`, `compare.aligned_languages` and `compare.out` are
    filled in by the script (the fine-tuning's model, its checkpoint, its languages, `out`).
    """

    out: str = "runs/alignment_compare"
    finetune: FinetuneSection = FinetuneSection()
    compare: CompareConfig = CompareConfig()


def finetune_summary(ft_out: Path) -> str:
    """Markdown lines on the fine-tuning run from its `loss.json` (empty if absent)."""
    path = ft_out / "loss.json"
    if not path.is_file():
        return ""
    r = json.loads(path.read_text(encoding="utf-8"))
    h = r.get("history") or []
    k = min(5, len(h))
    first = sum(x["loss"] for x in h[:k]) / k if k else float("nan")
    last = sum(x["loss"] for x in h[-k:]) / k if k else float("nan")
    lines = [
        "## Alignment fine-tuning",
        "",
        (
            f"`jlang finetune` of `{r.get('source')}`: {r.get('steps')} steps x {r.get('batch_size')} rows of "
            f"{r.get('seq_len')} tokens on translation pairs into {', '.join(r.get('languages', []))} "
            f"({r.get('train_rows')} rows, {sum((r.get('loss_tokens') or {}).values()):,} response tokens); trained: "
            f"{r.get('trainable')} ({r.get('trainable_params', 0):,} parameters). Training loss (response NLL) "
            f"{first:.3f} → {last:.3f} (mean of the first / last {k} steps)."
        ),
    ]
    ev = r.get("eval")
    if ev:
        lines.append(f"Held-out pairs (not trained on): {ev['before']:.3f} → {ev['after']:.3f}.")
    secs = r.get("timings") or {}
    if secs:
        lines.append("Fine-tuning wall time: " + ", ".join(f"{n} {s:.0f} s" for n, s in secs.items()) + ".")
    lines += [
        "",
        (
            "The comparison below counts activations and perplexity on the corpus's train split (text the "
            "fine-tuning never saw), the same tokens for both checkpoints."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg: AlignmentCompareConfig = config_lib.load_config(args.config, AlignmentCompareConfig, args.set)

    log = lambda msg: print(f"[alignment_compare] {msg}", flush=True)
    ft_cfg = load_finetune_config(cfg.finetune.config, list(cfg.finetune.overrides))  # validated before any work
    out, ft_out = Path(cfg.out), Path(ft_cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config_lib.to_dict(cfg))), sort_keys=False))
    timings: dict[str, float] = {}

    final = ft_out / "checkpoint"
    if cfg.finetune.reuse and final.is_dir():
        log(f"reusing the fine-tuned checkpoint {final}")
    else:
        t = time.perf_counter()
        final = finetune(ft_cfg, progress=not args.no_progress)
        timings["fine-tuning"] = time.perf_counter() - t
        log(f"fine-tuned in {timings['fine-tuning']:.0f} s -> {final}")

    ccfg = dataclasses.replace(
        cfg.compare,
        base=ft_cfg.model.source,
        aligned=str(final),
        out=str(out),
        aligned_languages=tuple(ft_cfg.data.languages),
        dtype=ft_cfg.model.dtype,
    )
    t = time.perf_counter()
    result, _ = run_compare(
        ccfg,
        progress=not args.no_progress,
        log=log,
        title=f"Alignment on {', '.join(ft_cfg.data.languages)}: base vs aligned `{ft_cfg.model.source}`",
        preamble=finetune_summary(ft_out),
    )
    timings["comparison"] = time.perf_counter() - t
    log("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    h = result.headline()
    log(
        f"mean Jaccard base vs aligned {h['mean_own_jaccard']:.3f}; spontaneous ratio {h.get('spontaneous_ratio')}; "
        f"wrote {out / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
