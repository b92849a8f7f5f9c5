"""Checks: each declared check gives every answer a verdict with a reason a person can read.

A check is named on the command line as `NAME[:key=value,...]`. Its parameters are a
pydantic model, so `--check length:max=300` is validated at submit, not at 3 a.m. on a
worker. Cheap checks run here, in order; the model-based ones (relevance, judge) are
declared here and run by `quality.semantic`, only once the cheap ones pass.

Custom checks: `--check custom:fn=package.module:function[,key=value...]` imports
`function(answer: Answer, **params)` on the worker. It returns a `Verdict`, a bool, or
`(passed, reason)` / `(passed, reason, score)`.
"""

from __future__ import annotations

import importlib
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator


@dataclass(frozen=True)
class Verdict:
    name: str
    # None: measured but not judged (a check that could not apply says why).
    passed: bool | None
    score: float | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Answer:
    """What the checks look at: one attempt's answer and what it answers."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    samples: list[str] = field(default_factory=list)
    # The item's own request (its user turns or prompt): what relevance compares to.
    question: str = ""
    label: str | None = None
    probabilities: dict[str, float] | None = None
    labels: list[str] = field(default_factory=list)
    json_schema: dict[str, Any] | None = None


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _split(value: object) -> object:
    return [w for w in value.split("|") if w] if isinstance(value, str) else value


# A list written `a|b|c` on the command line.
Words = Annotated[list[str], BeforeValidator(_split)]


class NoParams(Params):
    pass


class LengthParams(Params):
    min: int = Field(0, ge=0)
    max: int | None = Field(None, ge=1)
    unit: Literal["chars", "words", "tokens"] = "chars"


class RepetitionParams(Params):
    # Word n-grams; a share of repeated n-grams above `max_repeat` is degenerate. Measured
    # on 96 greedy 128-token demo-model answers: loops and lists that restate one line
    # score 0.31-0.95, fluent answers 0.25 or less (median 0.08).
    ngram: int = Field(4, ge=2)
    max_repeat: float = Field(0.3, gt=0, le=1)
    # zlib ratio over answers of 200+ characters: text that loops compresses too well.
    max_compression: float = Field(3.0, gt=1)


class PatternParams(Params):
    pattern: str
    ignore_case: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern does not compile: {exc}") from None
        return value


class KeywordParams(Params):
    words: Words = Field(min_length=1)
    mode: Literal["all", "any"] = "all"


# Phrases no batch answer should contain; replace with `blocklist:file=PATH` (one per line).
DEFAULT_BLOCKLIST = ["kill yourself", "build a bomb", "make a bomb", "make meth",
                     "child pornography", "credit card numbers of"]


class BlocklistParams(Params):
    words: Words = Field(default_factory=lambda: list(DEFAULT_BLOCKLIST), min_length=1)
    file: str | None = None


class ConfidenceParams(Params):
    min: float = Field(0.6, gt=0, le=1)
    # Self-consistency: how many samples a low-confidence item is asked for.
    samples: int = Field(5, ge=2, le=16)


class DistinctParams(Params):
    # Two samples more alike than this (difflib ratio) are near-duplicates.
    max_similarity: float = Field(0.9, gt=0, le=1)


class RelevanceParams(Params):
    # Cosine similarity of all-MiniLM-L6-v2 embeddings of the question and the answer.
    min: float = Field(0.3, ge=-1, le=1)


JUDGE_CRITERIA = ["coherence", "accuracy", "relevance", "safety"]


class JudgeParams(Params):
    # The mean of the criteria's 1-5 scores must reach `min`.
    min: float = Field(3.0, ge=1, le=5)
    criteria: Words = Field(JUDGE_CRITERIA, min_length=1)


class CustomParams(Params):
    model_config = ConfigDict(extra="allow")
    fn: str = Field(pattern=r"^[\w.]+:\w+$")


REFUSAL = re.compile(
    r"\b(I'?m sorry|I am sorry|I apologi[sz]e|I (?:can ?not|can't|cannot|am unable to|'m unable "
    r"to|won't) (?:help|assist|provide|comply|answer|do that)|as an AI\b|as a language model)",
    re.IGNORECASE)


def non_empty(a: Answer, p: NoParams) -> Verdict:
    ok = bool(a.text.strip()) or bool(a.label)
    return Verdict("non_empty", ok, reason="" if ok else "the answer is empty")


def length(a: Answer, p: LengthParams) -> Verdict:
    size = {"chars": len(a.text), "words": len(a.text.split()),
            "tokens": a.completion_tokens}[p.unit]
    if size < p.min:
        return Verdict("length", False, size, f"{size} {p.unit}, fewer than {p.min}")
    if p.max is not None and size > p.max:
        return Verdict("length", False, size, f"{size} {p.unit}, more than {p.max}")
    return Verdict("length", True, size)


def not_truncated(a: Answer, p: NoParams) -> Verdict:
    if a.finish_reason == "length":
        return Verdict("not_truncated", False, reason=(
            f"cut off at the token budget ({a.completion_tokens} tokens)"))
    return Verdict("not_truncated", True)


def repeated_share(text: str, n: int) -> float:
    """The share of word n-grams that repeat an earlier one: 0 for fresh text, near 1
    for a loop."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if len(grams) >= n else 0.0


def no_repetition(a: Answer, p: RepetitionParams) -> Verdict:
    share = repeated_share(a.text, p.ngram)
    if share > p.max_repeat:
        return Verdict("no_repetition", False, round(share, 3),
                       f"{share:.0%} of its {p.ngram}-word phrases repeat earlier ones")
    raw = a.text.encode()
    if len(raw) >= 200:
        ratio = len(raw) / len(zlib.compress(raw))
        if ratio > p.max_compression:
            return Verdict("no_repetition", False, round(share, 3),
                           f"the text loops (compresses {ratio:.1f}x)")
    return Verdict("no_repetition", True, round(share, 3))


def _json(a: Answer) -> tuple[Any, str]:
    try:
        return json.loads(a.text), ""
    except ValueError as exc:
        return None, f"not valid JSON: {exc}"


def valid_json(a: Answer, p: NoParams) -> Verdict:
    _, error = _json(a)
    return Verdict("json", not error, reason=error)


def json_schema(a: Answer, p: NoParams) -> Verdict:
    value, error = _json(a)
    if error:
        return Verdict("json_schema", False, reason=error)
    try:
        jsonschema.validate(value, a.json_schema or {})
    except jsonschema.ValidationError as exc:
        where = "/".join(str(x) for x in exc.absolute_path) or "top level"
        return Verdict("json_schema", False, reason=f"at {where}: {exc.message}")
    return Verdict("json_schema", True)


def label(a: Answer, p: NoParams) -> Verdict:
    ok = a.label in a.labels
    return Verdict("label", ok, reason="" if ok else f"{a.text.strip()!r} is not a label")


def regex(a: Answer, p: PatternParams) -> Verdict:
    found = re.search(p.pattern, a.text, re.IGNORECASE if p.ignore_case else 0)
    return Verdict("regex", bool(found), reason="" if found else f"does not match /{p.pattern}/")


def forbid_regex(a: Answer, p: PatternParams) -> Verdict:
    found = re.search(p.pattern, a.text, re.IGNORECASE if p.ignore_case else 0)
    return Verdict("forbid_regex", not found,
                   reason=f"contains {found.group(0)!r} (/{p.pattern}/)" if found else "")


def keywords(a: Answer, p: KeywordParams) -> Verdict:
    text = a.text.casefold()
    missing = [w for w in p.words if w.casefold() not in text]
    ok = not missing if p.mode == "all" else len(missing) < len(p.words)
    return Verdict("keywords", ok, len(p.words) - len(missing),
                   "" if ok else f"missing {', '.join(repr(w) for w in missing)}")


def no_refusal(a: Answer, p: NoParams) -> Verdict:
    found = REFUSAL.search(a.text)
    return Verdict("no_refusal", not found,
                   reason=f"reads as a refusal ({found.group(0)!r})" if found else "")


def blocklist(a: Answer, p: BlocklistParams) -> Verdict:
    text = a.text.casefold()
    hits = [w for w in p.words if w.casefold() in text]
    return Verdict("blocklist", not hits,
                   reason=f"contains blocked {', '.join(repr(w) for w in hits)}" if hits else "")


def confidence(a: Answer, p: ConfidenceParams) -> Verdict:
    if not a.probabilities or a.label is None:
        return Verdict("confidence", False, 0.0, "no label probabilities")
    value = float(a.probabilities.get(a.label, 0.0))
    ok = value >= p.min
    return Verdict("confidence", ok, round(value, 4),
                   "" if ok else f"confidence {value:.2f} in {a.label!r} is below {p.min}")


def similarity(x: str, y: str) -> float:
    return SequenceMatcher(None, x, y, autojunk=False).ratio()


def duplicates(samples: list[str], max_similarity: float) -> list[int]:
    """Indexes of samples that nearly repeat an earlier one."""
    return [j for j in range(len(samples))
            if any(similarity(samples[i], samples[j]) > max_similarity for i in range(j))]


def distinct(a: Answer, p: DistinctParams) -> Verdict:
    if len(a.samples) < 2:
        return Verdict("distinct", True, reason="one sample")
    dups = duplicates(a.samples, p.max_similarity)
    share = 1 - len(dups) / len(a.samples)
    return Verdict("distinct", not dups, round(share, 3),
                   f"{len(dups)} of {len(a.samples)} samples nearly repeat another" if dups
                   else "")


def custom(a: Answer, p: CustomParams) -> Verdict:
    fn = import_check(p.fn)
    got = fn(a, **(p.model_extra or {}))
    if isinstance(got, Verdict):
        return got
    if isinstance(got, bool):
        return Verdict(p.fn, got, reason="" if got else f"{p.fn} returned False")
    passed, reason, *score = got
    return Verdict(p.fn, bool(passed), float(score[0]) if score else None, str(reason))


def import_check(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"custom check {path!r} cannot be imported: {exc}") from None
    if not callable(fn):
        raise ValueError(f"custom check {path!r} is not a function")
    return fn  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Check:
    params: type[Params]
    # None for the model-based checks, which quality.semantic runs.
    run: Callable[[Answer, Any], Verdict] | None
    kinds: tuple[str, ...] = ("generate", "classify")


CHECKS: dict[str, Check] = {
    "non_empty": Check(NoParams, non_empty),
    "length": Check(LengthParams, length, ("generate",)),
    "not_truncated": Check(NoParams, not_truncated, ("generate",)),
    "no_repetition": Check(RepetitionParams, no_repetition, ("generate",)),
    "json": Check(NoParams, valid_json, ("generate",)),
    "json_schema": Check(NoParams, json_schema, ("generate",)),
    "label": Check(NoParams, label, ("classify",)),
    "regex": Check(PatternParams, regex, ("generate",)),
    "forbid_regex": Check(PatternParams, forbid_regex, ("generate",)),
    "keywords": Check(KeywordParams, keywords, ("generate",)),
    "no_refusal": Check(NoParams, no_refusal, ("generate",)),
    "blocklist": Check(BlocklistParams, blocklist, ("generate",)),
    "confidence": Check(ConfidenceParams, confidence, ("classify",)),
    "distinct": Check(DistinctParams, distinct, ("generate",)),
    "custom": Check(CustomParams, custom),
    "relevance": Check(RelevanceParams, None, ("generate",)),
    "judge": Check(JudgeParams, None, ("generate",)),
}
MODEL_BASED = ("relevance", "judge")


def parse(text: str) -> dict[str, Any]:
    """`NAME[:key=value,...]` as written on the command line; a value may hold commas
    (regular expressions do) as long as no `key=` follows them."""
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for part in re.split(r",(?=\s*\w+=)", rest) if rest else []:
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"check {name}: expected key=value, got {part!r}")
        params[key.strip()] = value
    return {"name": name.strip(), "params": params}


def validate(name: str, params: dict[str, Any], kind: str) -> dict[str, Any]:
    """The check's parameters with their defaults, or a ValueError naming what is wrong."""
    check = CHECKS.get(name)
    if check is None:
        raise ValueError(f"unknown check {name!r} (known: {', '.join(CHECKS)})")
    if kind not in check.kinds:
        raise ValueError(f"check {name!r} does not apply to {kind} jobs")
    try:
        model = check.params.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or name
        message = "unknown parameter" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"check {name}: {where}: {message.removeprefix('Value error, ')}"
                         ) from None
    if isinstance(model, BlocklistParams) and model.file:
        model = _read_blocklist(model)
    if isinstance(model, CustomParams):
        import_check(model.fn)
    return model.model_dump(exclude_none=True)


def _read_blocklist(p: BlocklistParams) -> BlocklistParams:
    """Read at submit, so every worker checks against the same list."""
    try:
        with open(p.file or "", encoding="utf-8") as fh:
            words = [line.strip() for line in fh if line.strip()]
    except OSError as exc:
        raise ValueError(f"check blocklist: cannot read {p.file}: {exc.strerror}") from None
    return BlocklistParams(words=words or p.words)


def run(checks: list[tuple[str, dict[str, Any]]], answer: Answer) -> list[Verdict]:
    """The cheap checks' verdicts, in the order declared."""
    verdicts = []
    for name, params in checks:
        check = CHECKS[name]
        if check.run is None:
            continue
        try:
            verdicts.append(check.run(answer, check.params.model_validate(params)))
        except Exception as exc:  # a custom check's bug fails its item, not the chunk
            verdicts.append(Verdict(name, False, reason=f"the check raised {exc!r}"))
    return verdicts
