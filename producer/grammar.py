"""Constraints the engine's grammar backends would refuse, found at submit.

A retry on the `constrain` step sends the job's `regex` check pattern to vLLM as a
grammar. Python's `re` accepts patterns (look-around, backreferences) that neither of
vLLM's grammar backends compiles, and a refused request only fails its attempt on the
worker: refusing the job at submit tells its author at once. vLLM picks xgrammar and
falls back to llguidance, so a pattern is refused only when both refuse it; llguidance
is asked first because it imports in milliseconds (xgrammar imports torch). Where
neither can be imported, the worker's refusal stays the only check.
"""

from __future__ import annotations

import logging

from schemas.errors import InputError
from schemas.spec import JobSpec

log = logging.getLogger(__name__)


def check(spec: JobSpec) -> None:
    """Raise InputError when the job's constrained retries would send a grammar the
    engine cannot compile."""
    pattern = constrained_regex(spec)
    if pattern is None:
        return
    refused = regex_refusal(pattern)
    if refused:
        raise InputError(f"check regex: the engine cannot constrain answers to /{pattern}/ "
                         f"on the ladder's constrain step: {refused}; rewrite the pattern "
                         "without look-around or backreferences, or drop `constrain` from "
                         "--ladder")


def constrained_regex(spec: JobSpec) -> str | None:
    """The pattern a constrain step would send (quality.ladder), if any."""
    regex = spec.check("regex")
    if spec.kind != "generate" or regex is None or spec.json_schema is not None:
        return None
    return str(regex["pattern"]) if "constrain" in spec.ladder else None


def regex_refusal(pattern: str) -> str | None:
    """Why both backends refuse `pattern`; None when one compiles it (or none is here)."""
    try:
        import llguidance
    except ImportError:
        return None
    error = llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("regex", pattern))
    if not error:
        return None
    try:
        import xgrammar
    except ImportError:
        return _reason(error)
    try:
        xgrammar.Grammar.from_regex(pattern)
    except Exception:
        return _reason(error)
    return None


def _reason(error: str) -> str:
    """llguidance's reason ("look-around ... is not supported") out of its report."""
    reasons = [line.strip().removeprefix("error: ") for line in error.splitlines()
               if line.strip().startswith("error:")]
    return reasons[0] if reasons else error.splitlines()[0]
