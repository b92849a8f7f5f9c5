"""Constraints the engine's grammar backends would refuse, found at submit.

A job's JSON schema constrains every answer, and a retry on the `constrain` step sends
the `regex` check's pattern to vLLM as a grammar. Python's `re` and JSON Schema accept
what neither of vLLM's grammar backends compiles (look-around, backreferences), and a
refused request only fails its attempt on the worker: refusing the job at submit tells
its author at once. vLLM tries xgrammar and falls back to llguidance, so a constraint is
refused only when both refuse it; llguidance is asked first because it imports in
milliseconds, and vLLM's own xgrammar validation (seconds to import) only then. Where
they cannot be imported, the worker's refusal stays the only check. An OpenAI row's own
`response_format` schema is left to the worker.
"""

from __future__ import annotations

import json
from typing import Any

from schemas.errors import InputError
from schemas.spec import JobSpec


def check(spec: JobSpec) -> None:
    """Raise InputError when the job would send a grammar the engine cannot compile."""
    if spec.json_schema is not None:
        refused = refusal({"json": spec.json_schema})
        if refused:
            raise InputError(f"--json-schema: the engine cannot constrain answers to it: "
                             f"{refused}")
    pattern = constrained_regex(spec)
    if pattern is not None:
        refused = refusal({"regex": pattern})
        if refused:
            raise InputError(
                f"check regex: the engine cannot constrain answers to /{pattern}/ on the "
                f"ladder's constrain step: {refused}; rewrite the pattern without "
                "look-around or backreferences, or drop `constrain` from --ladder")


def constrained_regex(spec: JobSpec) -> str | None:
    """The pattern a constrain step would send (quality.retries), if any."""
    regex = spec.check("regex")
    if spec.kind != "generate" or regex is None or spec.json_schema is not None:
        return None
    return str(regex["pattern"]) if "constrain" in spec.ladder else None


def refusal(constraint: dict[str, Any]) -> str | None:
    """Why both backends refuse `constraint` ({"regex": ...} or {"json": schema}); None
    when one compiles it, or when they are not installed here."""
    try:
        import llguidance
    except ImportError:
        return None
    (kind, value), = constraint.items()
    grammar = (llguidance.grammar_from("regex", value) if kind == "regex"
               else llguidance.LLMatcher.grammar_from_json_schema(json.dumps(value)))
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if not error or _xgrammar_accepts(constraint):
        return None
    return _reason(error)


def _xgrammar_accepts(constraint: dict[str, Any]) -> bool:
    try:
        from vllm.sampling_params import SamplingParams, StructuredOutputsParams
        from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar
    except ImportError:
        return False
    try:
        validate_xgrammar_grammar(
            SamplingParams(structured_outputs=StructuredOutputsParams(**constraint)))
    except Exception:
        return False
    return True


def _reason(error: str) -> str:
    """llguidance's reason ("look-around ... is not supported") out of its report."""
    reasons = [line.strip().removeprefix("error: ") for line in error.splitlines()
               if line.strip().startswith("error:")]
    return reasons[0] if reasons else error.splitlines()[0]
