"""What a fine-tuning run writes besides the model: `loss.json`, `loss.png`, `summary.md` and `config.yaml`.

`loss.json` is the run's result (`jlang.train.sft` assembles it): the model, what
trained, the data, the loss of every step, the held-out loss before and after,
timings and peak memory. The plot and the summary are drawn from it alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from jlang import config as config_lib
from jlang.io.report import new_figure, save_figure, write_json, write_text
from jlang.train.config import FinetuneConfig


def plot_loss(history: list[dict], path: Path, *, title: str, evals: Mapping[str, float] | None = None) -> Path:
    """Training loss per step with its running mean; the held-out loss before (step 0) and after (last step)."""
    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    ax.plot(steps, loss, ".-", lw=0.8, ms=3, alpha=0.6, label="training loss (one batch)")
    if len(loss) >= 5:
        w = max(len(loss) // 10, 3)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, lw=2, label=f"running mean ({w} steps)")
    if evals:
        ax.plot(
            [0, steps[-1]],
            [evals["before"], evals["after"]],
            "s--",
            color="C3",
            lw=1,
            label=f"held-out loss: {evals['before']:.3f} -> {evals['after']:.3f}",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("response NLL (nats / token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _mean_loss(history: list[dict], which: slice) -> float:
    values = [h["loss"] for h in history[which]]
    return float(np.mean(values)) if values else float("nan")


def summary_markdown(result: Mapping[str, Any]) -> str:
    """`summary.md`: the run in one paragraph, the loss at the start and the end, timings, peak memory."""
    h = result["history"]
    k = min(5, len(h))
    lines = [
        f"# Fine-tuning {result['model']} ({result['trainable']})",
        "",
        (
            f"{result['steps']} steps x {result['batch_size']} rows of {result['seq_len']} tokens, "
            f"{result['trainable_params']:,} trained parameters ({result['trainable_names']}); languages "
            f"{', '.join(result['languages'])}; {result['train_rows']} training rows, "
            f"{sum(result['loss_tokens'].values()):,} response tokens."
        ),
        "",
        "| | loss (response NLL, nats/token) |",
        "|---|---:|",
        f"| first step | {h[0]['loss']:.4f} |",
        f"| mean of the first {k} steps | {_mean_loss(h, slice(0, k)):.4f} |",
        f"| mean of the last {k} steps | {_mean_loss(h, slice(-k, None)):.4f} |",
        f"| last step | {h[-1]['loss']:.4f} |",
    ]
    ev = result.get("eval") or {}
    if ev:
        lines.append(f"| held-out pairs, before | {ev['before']:.4f} |")
        lines.append(f"| held-out pairs, after | {ev['after']:.4f} |")
    lines += [
        "",
        "Wall time: "
        + ", ".join(f"{name} {s:.1f} s" for name, s in result["timings"].items())
        + f"; peak memory (max RSS of process 0) {result['peak_rss_gb']:.2f} GB.",
        "",
        "![loss curve](loss.png)",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, result: Mapping[str, Any], cfg: FinetuneConfig) -> None:
    """`{out}/loss.json` (the result), `loss.png`, `config.yaml` (the resolved `FinetuneConfig`), `summary.md`."""
    write_json(out / "loss.json", result)
    title = f"{result['model']}: {result['trainable']}, {result['steps']} steps"
    plot_loss(result["history"], out / "loss.png", title=title, evals=result.get("eval"))
    resolved = json.loads(json.dumps(config_lib.to_dict(cfg)))
    write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    write_text(out / "summary.md", summary_markdown(result))
