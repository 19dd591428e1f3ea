"""Which samples the report shows: per class, the top samples and the worst misses, no duplicates,
each with its reason (plain lists in, plain lists out)."""
from __future__ import annotations

import math

import numpy as np

from scoring.report_selection import WORST_ANOMALOUS, WORST_NORMAL, select_report_samples


def _rows():
    # class "a" scores high everywhere, "b" low everywhere: a global ranking would show only "a"
    return [("a/test/n1", "a", 0, 0.95), ("a/test/n2", "a", 0, 0.93), ("a/test/n3", "a", 0, 0.91),
            ("a/test/d1", "a", 1, 0.90), ("a/test/d2", "a", 1, 0.89), ("a/test/d3", "a", 1, 0.60),
            ("b/test/n1", "b", 0, 0.30), ("b/test/d1", "b", 1, 0.20), ("b/test/d2", "b", 1, 0.05),
            ("b/test/n2", "b", 0, 0.10)]


def test_every_class_gets_its_top_samples_and_its_worst_misses():
    chosen = select_report_samples(_rows(), 3)
    ids = [sid for sid, _ in chosen]
    assert ids == ["a/test/n1", "a/test/n2", "a/test/d3", "b/test/n1", "b/test/d1", "b/test/d2"]
    reasons = dict(chosen)
    assert "highest score of its class" in reasons["a/test/n1"] and WORST_NORMAL in reasons["a/test/n1"]
    assert reasons["a/test/n2"].startswith("2nd highest score") and WORST_NORMAL not in reasons["a/test/n2"]
    assert reasons["a/test/d3"] == WORST_ANOMALOUS                 # not a top sample: only why it is shown
    assert WORST_NORMAL in reasons["b/test/n1"] and WORST_ANOMALOUS in reasons["b/test/d2"]
    assert "anomalous" in reasons["b/test/d1"] and "of 4" in reasons["b/test/d1"]


def test_no_duplicates_and_the_budget_is_per_class():
    rows = _rows()
    for per_class in range(0, 8):
        chosen = select_report_samples(rows, per_class)
        ids = [sid for sid, _ in chosen]
        assert len(ids) == len(set(ids))
        for cls, size in (("a", 6), ("b", 4)):
            assert sum(sid.startswith(cls + "/") for sid in ids) == min(per_class, size)
        assert all(reason for _, reason in chosen)
    assert select_report_samples(rows, 1) == [("a/test/n1", select_report_samples(rows, 1)[0][1]),
                                              ("b/test/n1", select_report_samples(rows, 1)[1][1])]


def test_against_a_slow_obvious_reference():
    rng = np.random.default_rng(4)
    for trial in range(60):
        n = int(rng.integers(1, 9))
        rows = [(f"c{k % 3}/test/{k:02d}", f"c{k % 3}", int(rng.integers(0, 2)), float(rng.integers(0, 5)) / 4)
                for k in range(n * 3)]
        if trial % 7 == 0:
            rows[0] = (rows[0][0], rows[0][1], rows[0][2], math.nan)
        per_class = int(rng.integers(1, 5))
        got = select_report_samples(rows, per_class)
        for cls in sorted({r[1] for r in rows}):
            members = [r for r in rows if r[1] == cls]
            key = lambda r: r[3] if math.isfinite(r[3]) else -math.inf  # noqa: E731
            ranked = sorted(members, key=lambda r: (-key(r), r[0]))
            wanted = [ranked[0][0]]
            normals = [r for r in ranked if r[2] == 0]
            anomalies = sorted([r for r in members if r[2] == 1], key=lambda r: (key(r), r[0]))
            wanted += [normals[0][0]] if normals else []
            wanted += [anomalies[0][0]] if anomalies else []
            wanted += [r[0] for r in ranked]
            unique = []
            for sid in wanted:
                if sid not in unique:
                    unique.append(sid)
            mine = [sid for sid, _ in got if sid.startswith(cls + "/")]
            assert sorted(mine) == sorted(unique[:per_class])
            if normals and normals[0][0] in mine:
                assert WORST_NORMAL in dict(got)[normals[0][0]]
            if anomalies and anomalies[0][0] in mine:
                assert WORST_ANOMALOUS in dict(got)[anomalies[0][0]]
