"""Claims: a sentence a notebook makes, checked against the numbers it just measured.

Two ways to make one:

* ``claim.greater(name, a, b, margin)`` (and ``claim.less``, ``claim.close``; ``claim.above`` and
  ``claim.below`` against a fixed threshold, saying where it comes from) -- the
  structured form, for every claim that compares two measured quantities. ``a`` and ``b`` are one
  number each, or one number **per seed** (paired: seed *i* of ``a`` with seed *i* of ``b``). The
  effect is the mean of the per-seed differences ``a - b``, reported with its 95% t-interval; the
  claim holds when the effect exceeds ``margin`` (``test="mean"``) or, where a null effect is
  plausible, when the whole interval does (``test="ci"``). Every such claim is recorded the same way
  (sides, effect, interval, margin, n), so the report shows every effect size next to its margin, and
  a claim whose two sides are the same quantity is refused before it is made.
* ``claim(name, holds, evidence)`` -- a plain yes/no, for what is not a comparison of two numbers.

Either way the claim

* is recorded with its evidence in the notebook's results (see :mod:`helpers.results`);
* prints a one-line verdict with the evidence, so a reader sees *why* it holds;
* in the ``quick`` and ``full`` profiles raises :class:`ClaimFailed` when it does not hold, which
  fails the notebook (and the test that executes it) loudly, evidence included;
* in ``smoke`` (seconds of training, for tests) is only reported: tiny runs cannot show effects.

``asserted=False`` (with ``why=``) makes a claim *reported only* in every profile: for an effect that
this scale shows on one dataset and not another, say so and assert it only where it holds.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from . import results

ASSERTED_PROFILES = ("quick", "full")
TESTS = ("mean", "ci")


class ClaimFailed(AssertionError):
    """A claim that the measured numbers do not support."""


class ClaimError(ValueError):
    """A claim that cannot be made as written (e.g. its two sides are the same quantity)."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _fmt(value.item())
    return str(value)


def _record(name: str, holds: bool, evidence: Mapping[str, Any], asserted: bool | None = None,
            why: str | None = None, **structured: Any) -> bool:
    profile = results.current().profile
    asserted = profile in ASSERTED_PROFILES if asserted is None else (asserted and profile in ASSERTED_PROFILES)
    entry: dict[str, Any] = {"name": name, "holds": holds, "asserted": asserted, "evidence": dict(evidence)}
    if why:
        entry["why_reported_only"] = why
    entry.update(structured)
    results.add_claim(entry)
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in evidence.items())
    if asserted:
        verdict = "HOLDS" if holds else "FAILS"
    elif profile not in ASSERTED_PROFILES:
        verdict = "not shown (smoke: reported only)" if not holds else "HOLDS (smoke: reported only)"
    else:
        verdict = ("holds" if holds else "does not hold") + " (reported only" + (f": {why})" if why else ")")
    print(f"[{verdict}] {name}" + (f"  ({shown})" if shown else ""))
    if not holds and asserted:
        raise ClaimFailed(f"claim failed in profile {profile!r}: {name}\n  evidence: {shown}")
    return holds


def _claim(name: str, holds: Any, evidence: Mapping[str, Any] | None = None, *,
           asserted: bool = True, why: str | None = None) -> bool:
    """Check and record a yes/no claim. Returns whether it holds; raises in quick/full when it does
    not (unless ``asserted=False``: then it is reported only, for the reason ``why``)."""
    if not asserted and not why:
        raise ClaimError(f"claim {name!r}: asserted=False needs why=... (why it is reported only)")
    return _record(name, bool(holds), dict(evidence or {}), None if asserted else False, why)


def _values(side: Any, label: str, name: str) -> np.ndarray:
    try:
        values = np.asarray(side, dtype=float).reshape(-1)
    except (TypeError, ValueError) as error:
        raise ClaimError(f"claim {name!r}: side {label!r} must be a number or numbers per seed, got {side!r}") from error
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ClaimError(f"claim {name!r}: side {label!r} must be finite numbers, got {values.tolist()}")
    return values


def interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired per-seed differences and its ``level`` t-interval ``(mean, low, high)``.

    With one difference the interval is unknown: ``(mean, nan, nan)``."""
    diffs = np.asarray(differences, dtype=float).reshape(-1)
    mean = float(diffs.mean())
    if diffs.size < 2:
        return mean, math.nan, math.nan
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, diffs.size - 1) * diffs.std(ddof=1) / math.sqrt(diffs.size))
    return mean, mean - half, mean + half


def compare(a: Any, b: Any, *, relative: bool = False, name: str = "claim",
            a_label: str = "a", b_label: str = "b") -> dict[str, Any]:
    """The paired comparison of ``a`` with ``b``: per-seed differences, their mean and 95% interval.

    ``a``/``b``: a number, or one number per seed (paired by position); a single number is compared
    with every seed of the other side. ``relative``: differences as a fraction of ``|b|``.
    Raises :class:`ClaimError` for sides of unequal length or the same quantity on both sides."""
    va, vb = _values(a, a_label, name), _values(b, b_label, name)
    if va.size > 1 and vb.size > 1 and va.size != vb.size:
        raise ClaimError(f"claim {name!r}: {a_label!r} has {va.size} seeds and {b_label!r} {vb.size}: pair them per seed")
    if a is b or a_label == b_label:
        raise ClaimError(f"claim {name!r}: both sides are the same quantity ({a_label!r} vs {b_label!r}): "
                         "a comparison with itself cannot fail")
    if va.size == 1 and vb.size == 1 and not relative and isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        raise ClaimError(f"claim {name!r}: both sides are integer constants ({a} vs {b}), not measurements")
    diffs = va - vb
    if relative:
        diffs = diffs / np.maximum(np.abs(vb), 1e-12)
    mean, low, high = interval(diffs)
    return {"a": va.tolist(), "b": vb.tolist(), "differences": diffs.tolist(), "effect": mean,
            "ci95": [low, high], "n": int(diffs.size), "relative": relative}


def _structured(name: str, kind: str, a: Any, b: Any, margin: float, test: str, a_label: str,
                b_label: str, relative: bool, asserted: bool, why: str | None,
                evidence: Mapping[str, Any] | None) -> bool:
    if test not in TESTS:
        raise ClaimError(f"claim {name!r}: test={test!r} is not allowed: expected one of {TESTS}")
    if not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ClaimError(f"claim {name!r}: margin={margin!r} must be a finite number")
    if not asserted and not why:
        raise ClaimError(f"claim {name!r}: asserted=False needs why=... (why it is reported only)")
    cmp = compare(a, b, relative=relative, name=name, a_label=a_label, b_label=b_label)
    low, high = cmp["ci95"]
    effect = cmp["effect"]
    if kind == "greater":
        holds = effect > margin if test == "mean" else (not math.isnan(low) and low > margin)
    else:  # close: |effect| within margin
        holds = (abs(effect) <= margin if test == "mean"
                 else (not math.isnan(low) and -margin <= low and high <= margin))
    unit = " (relative)" if relative else ""
    shown = {f"{a_label}": float(np.mean(cmp["a"])), f"{b_label}": float(np.mean(cmp["b"])),
             f"effect{unit}": effect}
    if not math.isnan(low):
        shown["95% CI"] = f"[{low:+.3g}, {high:+.3g}]"
    shown["margin"] = (f"> {margin:g}" if kind == "greater" else f"|effect| <= {margin:g}") + (" (whole CI)" if test == "ci" else "")
    shown["n"] = cmp["n"]
    shown.update(evidence or {})
    return _record(name, bool(holds), shown, None if asserted else False, why,
                   kind=kind, a_label=a_label, b_label=b_label, margin=float(margin), test=test, **cmp)


def greater(name: str, a: Any, b: Any, margin: float = 0.0, *, test: str = "mean", a_label: str = "a",
            b_label: str = "b", relative: bool = False, asserted: bool = True, why: str | None = None,
            evidence: Mapping[str, Any] | None = None) -> bool:
    """Claim that ``a`` exceeds ``b`` by more than ``margin``, paired over seeds.

    ``test="mean"``: the mean per-seed difference exceeds ``margin``; ``test="ci"``: the lower end of
    its 95% interval does (use it where no effect is a plausible outcome). Name the sides
    (``a_label``/``b_label``): they are what the report prints."""
    return _structured(name, "greater", a, b, margin, test, a_label, b_label, relative, asserted, why, evidence)


def less(name: str, a: Any, b: Any, margin: float = 0.0, *, test: str = "mean", a_label: str = "a",
         b_label: str = "b", relative: bool = False, asserted: bool = True, why: str | None = None,
         evidence: Mapping[str, Any] | None = None) -> bool:
    """Claim that ``a`` is below ``b`` by more than ``margin`` (``greater`` with the sides swapped)."""
    return _structured(name, "greater", b, a, margin, test, b_label, a_label, relative, asserted, why, evidence)


def close(name: str, a: Any, b: Any, tolerance: float, *, test: str = "mean", a_label: str = "a",
          b_label: str = "b", relative: bool = False, asserted: bool = True, why: str | None = None,
          evidence: Mapping[str, Any] | None = None) -> bool:
    """Claim that ``a`` and ``b`` differ by at most ``tolerance`` (``relative``: as a fraction of ``b``)."""
    return _structured(name, "close", a, b, tolerance, test, a_label, b_label, relative, asserted, why, evidence)


def above(name: str, a: Any, threshold: float, *, a_label: str = "a", threshold_label: str = "threshold",
          test: str = "mean", asserted: bool = True, why: str | None = None,
          evidence: Mapping[str, Any] | None = None) -> bool:
    """Claim that a measured ``a`` exceeds a fixed ``threshold`` (e.g. chance accuracy): say in
    ``threshold_label`` where the threshold comes from."""
    return _structured(name, "greater", a, float(threshold), 0.0, test, a_label, threshold_label, False,
                       asserted, why, evidence)


def below(name: str, a: Any, threshold: float, *, a_label: str = "a", threshold_label: str = "threshold",
          test: str = "mean", asserted: bool = True, why: str | None = None,
          evidence: Mapping[str, Any] | None = None) -> bool:
    """Claim that a measured ``a`` stays below a fixed ``threshold`` (e.g. a tolerance on a gap): say
    in ``threshold_label`` where the threshold comes from. (``above`` with the sides swapped.)"""
    return _structured(name, "greater", float(threshold), a, 0.0, test, threshold_label, a_label, False,
                       asserted, why, evidence)


class _ClaimAPI:
    """``claim(name, holds, evidence)`` plus ``claim.greater/less/close/above/below``."""

    greater = staticmethod(greater)
    less = staticmethod(less)
    close = staticmethod(close)
    above = staticmethod(above)
    below = staticmethod(below)
    compare = staticmethod(compare)

    def __call__(self, name: str, holds: Any, evidence: Mapping[str, Any] | None = None, *,
                 asserted: bool = True, why: str | None = None) -> bool:
        return _claim(name, holds, evidence, asserted=asserted, why=why)


claim = _ClaimAPI()
