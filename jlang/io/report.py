"""How every result is written: JSON, figures and markdown, atomically (matplotlib Agg, no pyplot state).

A result class subclasses `Report` and says what it holds (`to_dict`), which
figures it draws (`figures`: name -> a function that draws one PNG at a path)
and, optionally, its markdown; `Report.save(prefix)` then writes

    {prefix}.json           to_dict(), strict JSON (NaN -> null)
    {prefix}.png            the figure named ""
    {prefix}_{name}.png     every other figure
    {prefix}.md             markdown(), when there is one

and returns `{"json": path, "png": path, "{name}_png": path, "md": path}`.
The heat-map and figure helpers below are what the figures are drawn with.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jlang.io.atomic import atomic_file, output_path

# A figure: draws itself at the given path and returns it.
FigureWriter = Callable[[Path], Path]


def with_suffix(prefix: str | os.PathLike, suffix: str) -> Path:
    """`{prefix}{suffix}`: a prefix such as `out/ppl` is not a file name with an extension."""
    p = Path(prefix)
    return p.with_name(p.name + suffix)


def save_report(
    prefix: str | os.PathLike,
    record: Any,
    figures: Mapping[str, FigureWriter] | None = None,
    markdown: str | None = None,
) -> dict[str, Path]:
    """Write `{prefix}.json`, the figures and `{prefix}.md` (see the module docstring); return kind -> path."""
    out = {"json": write_json(with_suffix(prefix, ".json"), record)}
    for name, draw in (figures or {}).items():
        out[f"{name}_png" if name else "png"] = draw(with_suffix(prefix, f"_{name}.png" if name else ".png"))
    if markdown is not None:
        out["md"] = write_text(with_suffix(prefix, ".md"), markdown)
    return out


class Report:
    """A result that saves itself as JSON, figures and markdown (`save_report`)."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def figures(self) -> dict[str, FigureWriter]:
        """name -> figure writer (`""`: `{prefix}.png`; `"layers"`: `{prefix}_layers.png`)."""
        return {}

    def markdown(self) -> str | None:
        return None

    def save(self, path_prefix: str | os.PathLike) -> dict[str, Path]:
        """`{prefix}.json`, `{prefix}.png`, `{prefix}_{name}.png`, `{prefix}.md`; returns kind -> path."""
        return save_report(path_prefix, self.to_dict(), self.figures(), self.markdown())


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
    """`obj` as strict JSON (`to_jsonable`), atomically."""
    return write_text(path, json.dumps(to_jsonable(obj), indent=1, ensure_ascii=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text (markdown, YAML), atomically."""
    p = output_path(path)
    with atomic_file(p) as tmp:
        tmp.write_text(text, encoding="utf-8")
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


def draw_heatmap(
    ax,
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    title: str = "",
    cbar_label: str = "",
    fmt: str = "{:.2f}",
    diverging: bool = False,
    vmin=None,
    vmax=None,
    annotate: bool = True,
    xlabel: str = "",
    ylabel: str = "",
    origin: str = "upper",
    symlog: float | None = None,
) -> None:
    """One annotated heat map on `ax` (NaN cells blank).

    `symlog`: a symmetric log colour scale, linear within ±symlog.
    """
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
    im = ax.imshow(
        np.ma.masked_invalid(m),
        aspect="auto",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
        origin=origin,
        norm=norm,
    )
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
                    ax.text(
                        j,
                        i,
                        fmt.format(m[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if dark else "black",
                    )


def save_heatmaps(
    path: str | os.PathLike,
    panels: Sequence[dict],
    *,
    ncols: int | None = None,
    panel_size: tuple[float, float] = (6.0, 5.0),
    suptitle: str = "",
) -> Path:
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
    p = output_path(path)
    with atomic_file(p) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return p


def new_figure(width: float, height: float):
    """An Agg `Figure` (for plots other than heat maps)."""
    return _figure(width, height)


def save_figure(fig, path: str | os.PathLike) -> Path:
    p = output_path(path)
    fig.tight_layout()
    with atomic_file(p) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return p
