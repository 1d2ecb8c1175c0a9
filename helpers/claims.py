"""Claims: a sentence a notebook makes, checked against the numbers it just measured.

``claim("fine-tuning beats scratch at 10 labels/class", ft > scratch, evidence={...})``

* records the claim and its evidence in the notebook's results (see :mod:`helpers.results`);
* prints a one-line verdict with the evidence, so a reader sees *why* it holds;
* in the ``quick`` and ``full`` profiles a claim that does not hold raises :class:`ClaimFailed`,
  which fails the notebook (and the test that executes it) loudly, evidence included;
* in ``smoke`` (seconds of training, for tests) it is only reported: tiny runs cannot show effects.
"""

from __future__ import annotations

from typing import Any, Mapping

from . import results

ASSERTED_PROFILES = ("quick", "full")


class ClaimFailed(AssertionError):
    """A claim that the measured numbers do not support."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _fmt(value.item())
    return str(value)


def claim(name: str, holds: Any, evidence: Mapping[str, Any] | None = None) -> bool:
    """Check and record a claim. Returns whether it holds; raises in quick/full when it does not."""
    holds = bool(holds)
    evidence = dict(evidence or {})
    profile = results.current().profile
    asserted = profile in ASSERTED_PROFILES
    results.add_claim({"name": name, "holds": holds, "asserted": asserted, "evidence": evidence})
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in evidence.items())
    verdict = "HOLDS" if holds else ("FAILS" if asserted else "not shown (smoke: reported only)")
    print(f"[{verdict}] {name}" + (f"  ({shown})" if shown else ""))
    if not holds and asserted:
        raise ClaimFailed(f"claim failed in profile {profile!r}: {name}\n  evidence: {shown}")
    return holds
