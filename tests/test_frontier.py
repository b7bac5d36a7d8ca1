"""The Pareto frontier against hand-made tables, the LanceDB reader and the plot."""

import datetime as dt
import json

import pytest

from helix_test_support import run_helix
from helix_framework.frontier import FrontierError, compute_frontier, load_candidates, pareto_frontier, plot_frontier
from helix_framework.results import ResultsDB

# name: (bits, top1, rel_l2, icc, certified)
TABLE = {
    "a": (1.0, 0.50, 0.60, 0.70, False),
    "b": (2.0, 0.80, 0.30, 0.90, False),
    "c": (2.0, 0.70, 0.20, 0.95, False),   # same bits as b: worse top1, better rel_l2 and icc
    "d": (3.0, 0.75, 0.25, 0.92, False),   # dominated by b (top1) and by c (rel_l2, icc)
    "e": (4.0, 0.995, 0.10, 0.99, True),
    "f": (5.0, 0.995, 0.05, 0.995, True),  # ties e on top1 with more bits: off the top1 frontier
    "g": (0.5, None, 0.90, 0.10, None),    # no token agreement measured
}


def rows():
    return [{"candidate": k, "candidate_key": k * 8, "bits_per_weight": b, "top1": t, "rel_l2": r, "icc_3_1": i,
             "certified": c, "sweep": "hand"} for k, (b, t, r, i, c) in TABLE.items()]


def names(result):
    return [p["candidate"] for p in result.frontier]


def test_frontier_of_a_hand_made_table():
    top1 = compute_frontier(rows(), y="top1")
    assert names(top1) == ["a", "b", "e"] and top1.missing_y == 1 and top1.gate == 0.99
    rel = compute_frontier(rows(), y="rel_l2")  # minimized
    assert names(rel) == ["g", "a", "c", "e", "f"] and rel.missing_y == 0 and rel.gate is None
    icc = compute_frontier(rows(), y="icc_3_1")
    assert names(icc) == ["g", "a", "c", "e", "f"]
    assert [p["on_frontier"] for p in top1.points if p["candidate"] == "d"] == [False]
    with pytest.raises(FrontierError, match="no candidate has both"):
        compute_frontier([r for r in rows() if r["candidate"] == "g"], y="top1")


def test_pareto_brute_force_agrees_on_random_points():
    import numpy as np

    rng = np.random.default_rng(0)
    pts = [{"x": float(x), "y": float(y)} for x, y in rng.integers(0, 12, size=(200, 2))]
    front = pareto_frontier(pts, maximize=True)
    for p in pts:
        dominated = any(q["x"] <= p["x"] and q["y"] >= p["y"] and (q["x"], q["y"]) != (p["x"], p["y"]) for q in pts)
        on = any(q is p for q in front)
        assert not (dominated and on)
        if not dominated:  # a non-dominated point (or an identical twin of it) is on the frontier
            assert any((q["x"], q["y"]) == (p["x"], p["y"]) for q in front)


def _summary_row(name, bits, top1, rel, icc, certified, status="ok"):
    return {"candidate_key": name * 8, "sweep": "hand", "candidate": f"hand/{name}", "run_id": "r",
            "time": dt.datetime.now(dt.timezone.utc), "model_id": "m", "model_hash": "h", "kernel_signature": "s",
            "status": status, "bits_per_weight": bits, "top1": top1, "rel_l2": rel, "icc_3_1": icc,
            "certified": certified, "params": json.dumps({"bits": bits})}


def test_reads_lancedb_and_plots(tmp_path):
    db = ResultsDB(tmp_path / "db")
    for name, (b, t, r, i, c) in TABLE.items():
        db.write_candidate([], _summary_row(name, b, t, r, i, c))
    db.write_candidate([], _summary_row("z", 0.1, 1.0, 0.0, 1.0, True, status="failed"))
    loaded = load_candidates(tmp_path / "db")
    assert sorted(r["candidate"] for r in loaded) == [f"hand/{k}" for k in sorted(TABLE)]  # failed row left out
    result = compute_frontier(loaded, y="top1")
    assert names(result) == ["hand/a", "hand/b", "hand/e"]
    png = plot_frontier(result, tmp_path / "plots" / "top1.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    proc = run_helix(["frontier", "--db", str(tmp_path / "db"), "--y", "rel_l2", "--plot",
                      str(tmp_path / "rel.png"), "--json"], check=True)
    data = json.loads(proc.stdout)
    assert [p["candidate"] for p in data["frontier"]] == ["hand/g", "hand/a", "hand/c", "hand/e", "hand/f"]
    assert (tmp_path / "rel.png").stat().st_size > 10_000
    proc = run_helix(["frontier", "--db", str(tmp_path / "db")], check=True)
    assert "hand/e" in proc.stdout and "hand/d" not in proc.stdout
    bad = run_helix(["frontier", "--db", str(tmp_path / "nothing")])
    assert bad.returncode == 2 and "no such results directory" in bad.stderr
