"""Seed statistics for the comparisons: mean ± std, paired t intervals, verdicts.

``examples/compare`` and ``examples/transformer`` both train every arm once
per seed from the same initialisation and batches, so the per-seed
difference between two arms isolates the arm. This module summarises those
differences: a t interval on their mean (scipy's quantile, any number of
seeds) and a verdict read off the interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value).

    Example:
      >>> mean_std([1.0, 2.0, 3.0])
      {'mean': 2.0, 'std': 1.0, 'values': [1.0, 2.0, 3.0]}
    """
    v = np.asarray(values, np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "values": v.tolist()}


def paired_ci(diffs: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of paired differences with a t confidence interval (n - 1 dof).

    Args:
      diffs: one arm - baseline difference per seed.
      level: the interval's coverage.

    Returns:
      ``mean``, ``ci_low``, ``ci_high`` (``None`` with a single seed) and the
      ``values``.

    Example:
      >>> ci = paired_ci([1.0, 2.0, 3.0])  # mean 2, sample std 1, t(2) 4.303
      >>> round(ci["ci_low"], 3), round(ci["ci_high"], 3)
      (-0.484, 4.484)
    """
    d = np.asarray(diffs, np.float64)
    mean = float(d.mean())
    if len(d) < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "values": d.tolist()}
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1))
    half /= math.sqrt(len(d))
    return {
        "mean": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "values": d.tolist(),
    }


def verdict(ci: dict[str, Any], *, higher_is_better: bool, arm: str = "GC") -> str:
    """``<arm> better`` / ``worse`` / no significant difference, from a 95% CI.

    Example:
      >>> verdict(paired_ci([0.010, 0.011, 0.012]), higher_is_better=False)
      'GC worse'
      >>> verdict(paired_ci([-1.0, 1.0]), higher_is_better=True, arm="gc")
      'no significant difference at 95%'
    """
    if ci["ci_low"] is None:
        return "no confidence interval from one seed"
    if ci["ci_low"] > 0 or ci["ci_high"] < 0:
        arm_higher = ci["ci_low"] > 0
        return f"{arm} better" if arm_higher == higher_is_better else f"{arm} worse"
    return "no significant difference at 95%"


def pm(stat: dict[str, Any], fmt: str) -> str:
    """``mean ± std``, or the value alone when there is one seed.

    Example:
      >>> pm(mean_std([1.0, 2.0, 3.0]), ".2f")
      '2.00 ± 1.00'
    """
    if len(stat["values"]) < 2:
        return f"{stat['mean']:{fmt}}"
    return f"{stat['mean']:{fmt}} ± {stat['std']:{fmt}}"


def ci_text(ci: dict[str, Any], fmt: str) -> str:
    """``+mean [low, high]``, or ``+mean [n/a]`` without an interval.

    Example:
      >>> ci_text(paired_ci([1.0, 2.0, 3.0]), ".2f")
      '+2.00 [-0.48, +4.48]'
    """
    if ci["ci_low"] is None:
        return f"{ci['mean']:+{fmt}} [n/a]"
    return f"{ci['mean']:+{fmt}} [{ci['ci_low']:+{fmt}}, {ci['ci_high']:+{fmt}}]"


def text_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart, trailing blanks cut.

    Example:
      >>> for line in text_table([("metric", "GC"), ("loss", "0.1")]):
      ...     print(line)
      metric  GC
      loss    0.1
    """
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]
