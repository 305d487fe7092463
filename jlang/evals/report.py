"""Small writers shared by the evaluations: JSON (atomic) and annotated heat maps (matplotlib Agg, no pyplot state)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jlang.io.atomic import atomic_file


def to_jsonable(obj: Any) -> Any:
    """NumPy arrays and scalars -> lists and Python numbers; NaN/inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    p = Path(path)
    with atomic_file(p) as tmp:
        tmp.write_text(json.dumps(to_jsonable(obj), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def from_json_matrix(x: Any) -> np.ndarray:
    """A JSON list of lists (None = NaN) as a float64 array."""
    return np.array([[np.nan if v is None else v for v in row] for row in x], np.float64)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def draw_heatmap(ax, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], *, title: str = "",
                 cbar_label: str = "", fmt: str = "{:.2f}", diverging: bool = False, vmin=None, vmax=None,
                 annotate: bool = True, xlabel: str = "", ylabel: str = "", origin: str = "upper",
                 symlog: float | None = None) -> None:
    """One annotated heat map on `ax` (NaN cells blank); `symlog`: a symmetric log colour scale, linear within ±symlog."""
    m = np.asarray(matrix, np.float64)
    finite = m[np.isfinite(m)]
    if diverging:
        lim = float(np.max(np.abs(finite))) if finite.size else 1.0
        vmin, vmax, cmap = (-lim if vmin is None else vmin), (lim if vmax is None else vmax), "RdBu_r"
    else:
        cmap = "viridis"
    norm = None
    if symlog is not None:
        from matplotlib.colors import SymLogNorm

        norm, vmin, vmax = SymLogNorm(linthresh=symlog, vmin=vmin, vmax=vmax), None, None
    im = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                   origin=origin, norm=norm)
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=90 if max((len(c) for c in cols), default=0) > 3 else 0)
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(im, ax=ax, label=cbar_label, fraction=0.046, pad=0.04)
    if annotate and m.size <= 400:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    frac = float(im.norm(m[i, j]))
                    dark = (abs(frac - 0.5) > 0.3) if diverging else frac < 0.5
                    ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if dark else "black")


def save_heatmaps(path: str | os.PathLike, panels: Sequence[dict], *, ncols: int | None = None,
                  panel_size: tuple[float, float] = (6.0, 5.0), suptitle: str = "") -> Path:
    """A PNG of one or more `draw_heatmap` panels (each a dict of its keyword arguments)."""
    n = len(panels)
    ncols = min(ncols or 2, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(panel_size[0] * ncols, panel_size[1] * nrows)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        draw_heatmap(ax, **panel)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    p = Path(path)
    with atomic_file(p) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return p


def new_figure(width: float, height: float):
    """An Agg `Figure` (for plots other than heat maps)."""
    return _figure(width, height)


def save_figure(fig, path: str | os.PathLike) -> Path:
    p = Path(path)
    fig.tight_layout()
    with atomic_file(p) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return p
