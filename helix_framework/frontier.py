"""The Pareto frontier of bits per weight against a quality figure.

A candidate is on the frontier when no other candidate has fewer (or equal)
bits per weight and a better (or equal) quality figure with at least one of
the two strictly better. Quality figures: ``top1`` (token agreement, larger
is better), ``icc_3_1`` (held-out ICC(3,1), larger is better) and ``rel_l2``
(held-out relative L2, smaller is better). Candidates without the figure
(e.g. no token agreement measured) are counted and left out.

`plot_frontier` draws every candidate, the frontier as a step line and the
certification gate (top-1 agreement >= 0.99) when y is top1; certified
candidates are marked on every plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import attrs

from helix_framework.errors import FrontierError

#: y option -> (column of the candidates table, label, larger is better)
Y_FIGURES = {
    "top1": ("top1", "top-1 token agreement", True),
    "icc_3_1": ("icc_3_1", "held-out ICC(3,1), mean over tensors", True),
    "rel_l2": ("rel_l2", "held-out relative L2, mean over tensors", False),
}
X_FIGURES = {"bits": ("bits_per_weight", "bits per weight (codes + codebooks + rotation)")}
TOP1_GATE = 0.99




@attrs.frozen
class FrontierResult:
    x: str
    y: str
    x_label: str
    y_label: str
    maximize: bool
    points: list[dict[str, Any]]  # every candidate with both figures
    frontier: list[dict[str, Any]]  # in increasing x
    missing_y: int
    gate: float | None

    def to_json(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "x_label": self.x_label, "y_label": self.y_label,
                "maximize": self.maximize, "candidates": len(self.points) + self.missing_y,
                "missing_y": self.missing_y, "gate": self.gate, "frontier": self.frontier, "points": self.points}


def pareto_frontier(points: Iterable[dict[str, Any]], *, maximize: bool = True) -> list[dict[str, Any]]:
    """The non-dominated points of ``{"x": ..., "y": ...}`` dicts (smaller x is
    better; larger y when ``maximize``), in increasing x."""
    sign = 1.0 if maximize else -1.0
    ordered = sorted(points, key=lambda p: (p["x"], -sign * p["y"]))
    out: list[dict[str, Any]] = []
    best = None
    for p in ordered:
        score = sign * p["y"]
        if best is None or score > best:
            out.append(p)
            best = score
    return out


def load_candidates(db_dir: str | Path, *, sweep: str | None = None) -> list[dict[str, Any]]:
    """Summary rows with status ok (optionally of one sweep), newest per key."""
    db_dir = Path(db_dir)
    if not db_dir.is_dir():
        raise FrontierError(f"{db_dir}: no such results directory")
    from helix_framework.results import CANDIDATES, ResultsDB

    rows = ResultsDB(db_dir).rows(CANDIDATES)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r["status"] != "ok" or (sweep is not None and r["sweep"] != sweep):
            continue
        key = (r["candidate_key"], r["model_hash"])
        if key not in latest or r["time"] > latest[key]["time"]:
            latest[key] = r
    return list(latest.values())


def compute_frontier(rows: list[dict[str, Any]], *, x: str = "bits", y: str = "top1") -> FrontierResult:
    """The frontier of the summary ``rows`` (dicts with the candidates columns)."""
    if x not in X_FIGURES:
        raise FrontierError(f"unknown x {x!r}; expected one of {', '.join(X_FIGURES)}")
    if y not in Y_FIGURES:
        raise FrontierError(f"unknown y {y!r}; expected one of {', '.join(Y_FIGURES)}")
    x_col, x_label = X_FIGURES[x]
    y_col, y_label, maximize = Y_FIGURES[y]
    points, missing = [], 0
    for r in rows:
        xv, yv = r.get(x_col), r.get(y_col)
        if xv is None or yv is None:
            missing += 1
            continue
        points.append({"x": float(xv), "y": float(yv), "candidate": r.get("candidate"),
                       "candidate_key": r.get("candidate_key"), "certified": r.get("certified"),
                       "sweep": r.get("sweep")})
    if not points:
        raise FrontierError(f"no candidate has both {x_col} and {y_col}"
                            + (" (was token_agreement measured?)" if y == "top1" else ""))
    front = pareto_frontier(points, maximize=maximize)
    keys = {id(p) for p in front}
    for p in points:
        p["on_frontier"] = id(p) in keys
    points.sort(key=lambda p: (p["x"], p["y"]))
    return FrontierResult(x, y, x_label, y_label, maximize, points, front, missing, TOP1_GATE if y == "top1" else None)


def plot_frontier(result: FrontierResult, path: str | Path, *, title: str | None = None) -> Path:
    """Every candidate, the frontier (step line) and the gate, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    try:
        others = [p for p in result.points if not p["on_frontier"]]
        ax.scatter([p["x"] for p in others], [p["y"] for p in others], s=22, c="0.6",
                   label=f"candidates ({len(result.points)})", zorder=2)
        fx = [p["x"] for p in result.frontier]
        fy = [p["y"] for p in result.frontier]
        ax.step(fx, fy, where="post", color="tab:blue", lw=1.5, zorder=3)
        ax.scatter(fx, fy, s=40, c="tab:blue", label=f"Pareto frontier ({len(fx)})", zorder=4)
        for p in result.frontier:
            ax.annotate(_short(p["candidate"]), (p["x"], p["y"]), textcoords="offset points", xytext=(5, -10),
                        fontsize=6.5, color="tab:blue")
        certified = [p for p in result.points if p.get("certified")]
        if certified:
            ax.scatter([p["x"] for p in certified], [p["y"] for p in certified], s=90, facecolors="none",
                       edgecolors="tab:green", label="certified (top-1 >= 0.99, top-5 >= 0.999)", zorder=5)
        if result.gate is not None:
            ax.axhline(result.gate, color="tab:red", ls="--", lw=1.2,
                       label=f"certification gate: top-1 = {result.gate}", zorder=1)
            lo = min(min(p["y"] for p in result.points), result.gate)
            ax.set_ylim(lo - 0.02 * (1.0 - lo + 1e-9), 1.0 + 0.05 * (1.0 - lo + 1e-9))
        if max(p["x"] for p in result.points) / max(min(p["x"] for p in result.points), 1e-9) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(result.x_label)
        ax.set_ylabel(result.y_label + (" (higher is better)" if result.maximize else " (lower is better)"))
        ax.set_title(title or f"Pareto frontier: {result.y_label} vs {result.x_label}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _short(name: Any) -> str:
    """``sweep/centroids=256 residual.depth=1`` -> ``cen=256 dep=1``."""
    text = str(name)
    text = text.split("/", 1)[1] if "/" in text else text
    parts = []
    for token in text.split(" "):
        key, eq, value = token.partition("=")
        parts.append(f"{key.split('.')[-1][:3]}={value}" if eq else token)
    return " ".join(parts)


__all__ = ["FrontierError", "FrontierResult", "TOP1_GATE", "compute_frontier", "load_candidates", "pareto_frontier",
           "plot_frontier"]
