"""Which samples ``report.html`` shows, and why: a pure function of the scored rows.

Object scores are not comparable across classes (each class has its own score range), so the
choice is made per class: the class's highest-scored samples, its worst false alarm (the
highest-scored normal sample) and its worst miss (the lowest-scored anomalous sample), each
sample once, each with the reason it is shown.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

WORST_NORMAL = "highest-scored normal sample of its class (its worst false alarm)"
WORST_ANOMALOUS = "lowest-scored anomalous sample of its class (its worst miss)"


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _key(score: float) -> float:
    return score if math.isfinite(score) else -math.inf


def select_report_samples(rows: Iterable[Sequence], per_class: int) -> list[tuple[str, str]]:
    """The samples to show: [(sample id, reason)], classes in the order they first appear.

    ``rows``: (sample id, class, label 0/1, object score) each (extra fields are ignored);
    ``per_class``: at most this many samples per class. Per class the candidates are, in this
    priority: the highest-scored sample, the highest-scored normal one, the lowest-scored
    anomalous one, then the next highest-scored ones; the first ``per_class`` distinct ones are
    shown, the highest-scored first (in score order), then the misses. A non-finite score ranks
    lowest; ties go to the smaller id. A sample chosen for two reasons is listed once with both.
    """
    per_class = int(per_class)
    if per_class <= 0:
        return []
    classes: dict[str, list[tuple[str, int, float]]] = {}
    for row in rows:
        sid, cls, label, score = str(row[0]), str(row[1]), int(row[2]), float(row[3])
        classes.setdefault(cls, []).append((sid, label, score))
    out: list[tuple[str, str]] = []
    for members in classes.values():
        ranked = sorted(members, key=lambda m: (-_key(m[2]), m[0]))           # highest first
        rank = {m[0]: k + 1 for k, m in enumerate(ranked)}
        normal = [m for m in ranked if m[1] == 0]
        anomalous = sorted((m for m in members if m[1] == 1), key=lambda m: (_key(m[2]), m[0]))  # lowest first
        priority: list[str] = [ranked[0][0]]
        if normal:
            priority.append(normal[0][0])
        if anomalous:
            priority.append(anomalous[0][0])
        priority += [m[0] for m in ranked[1:]]
        chosen: list[str] = []
        for sid in priority:
            if sid not in chosen:
                chosen.append(sid)
            if len(chosen) == per_class:
                break
        misses = {normal[0][0]: WORST_NORMAL} if normal else {}
        if anomalous:
            misses[anomalous[0][0]] = WORST_ANOMALOUS
        label_of = {m[0]: m[1] for m in members}
        prefix = 0                                       # ranks 1..prefix are all shown: the top samples
        while prefix < len(ranked) and ranked[prefix][0] in chosen:
            prefix += 1
        tops = [m[0] for m in ranked[:prefix]]
        tail = sorted((sid for sid in chosen if rank[sid] > prefix), key=lambda s: rank[s])
        for sid in tops + tail:
            reasons = []
            if rank[sid] <= prefix:
                kind = "anomalous" if label_of[sid] else "normal"
                place = "highest" if rank[sid] == 1 else f"{_ordinal(rank[sid])} highest"
                reasons.append(f"{place} score of its class (of {len(members)}; {kind})")
            if sid in misses:
                reasons.append(misses[sid])
            out.append((sid, "; ".join(reasons)))
    return out
