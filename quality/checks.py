"""Checks: each declared check gives every answer a verdict with a reason a person can read.

A check is named on the command line as `NAME[:key=value,...]`. Its parameters are a
pydantic model, so `--check length:max=300` is validated at submit, not at 3 a.m. on a
worker. Cheap checks run here, in order; the model-based ones (relevance, judge) are
declared here and run by `quality.semantic`, only once the cheap ones pass.

Beside the built-in checks, the operator may register checks of their own (entry points
of group `nightshift.checks`, or modules in NIGHTSHIFT_CHECK_MODULES; see
`quality.registry`); a spec names them like built-in ones. Nothing a spec says is ever
imported: a name neither built in nor registered is refused at submit, and on a worker
it fails each item's verdict with the reason.

Every check is bounded in time: a submitter's pattern runs with `REGEX_SECONDS` to
match (the `regex` engine stops it), a registered check in a child process that is
killed past `registry.CALL_SECONDS`. Either way the item's verdict fails with the reason.
"""

from __future__ import annotations

import inspect
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from functools import partial
from typing import Annotated, Any, Literal

import jsonschema

# The `regex` engine, for submitters' patterns: unlike `re`, it can stop a match that
# backtracks without end (`(a|aa)+$`).
import regex as rx
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from quality import registry
from schemas.spec import JobSpec

# How long a submitter's pattern may take on one answer; honest ones take microseconds.
REGEX_SECONDS = 1.0


@dataclass(frozen=True)
class Verdict:
    name: str
    # None: measured but not judged (a check that could not apply says why).
    passed: bool | None
    score: float | None = None
    reason: str = ""
    # False when no other answer could pass: the check cannot run here. Not stored.
    retryable: bool = True

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        del found["retryable"]
        return found


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
    # Word n-grams; a share of repeated n-grams above `max_repeat` is degenerate: 0.3 lies
    # between fluent answers and loops (bench/README.md, "Figures behind defaults").
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
            rx.compile(value)
        except rx.error as exc:
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


class RegisteredParams(Params):
    """A registered check's parameters: as the spec gives them, bound to its function."""

    model_config = ConfigDict(extra="allow")


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
    if a.json_schema is None:
        return Verdict("json_schema", False, reason="the item has no JSON schema to check")
    value, error = _json(a)
    if error:
        return Verdict("json_schema", False, reason=error)
    try:
        jsonschema.validate(value, a.json_schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(x) for x in exc.absolute_path) or "top level"
        return Verdict("json_schema", False, reason=f"at {where}: {exc.message}")
    return Verdict("json_schema", True)


def label(a: Answer, p: NoParams) -> Verdict:
    ok = a.label in a.labels
    return Verdict("label", ok, reason="" if ok else f"{a.text.strip()!r} is not a label")


def _search(p: PatternParams, text: str) -> rx.Match[str] | None:
    return rx.search(p.pattern, text, rx.IGNORECASE if p.ignore_case else 0,
                     timeout=REGEX_SECONDS)


def _too_slow(name: str, p: PatternParams) -> Verdict:
    return Verdict(name, False, reason=(
        f"/{p.pattern}/ ran past {REGEX_SECONDS:g} s on this answer and was stopped "
        "(it backtracks too much: simplify the pattern)"))


def regex(a: Answer, p: PatternParams) -> Verdict:
    try:
        found = _search(p, a.text)
    except TimeoutError:
        return _too_slow("regex", p)
    return Verdict("regex", bool(found), reason="" if found else f"does not match /{p.pattern}/")


def forbid_regex(a: Answer, p: PatternParams) -> Verdict:
    try:
        found = _search(p, a.text)
    except TimeoutError:
        return _too_slow("forbid_regex", p)
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


def registered(name: str, a: Answer, p: RegisteredParams) -> Verdict:
    """A registered check's verdict, computed in a child process (quality.registry)."""
    got = registry.call(name, a, p.model_extra or {})
    if isinstance(got, Verdict):
        return got
    if isinstance(got, bool):
        return Verdict(name, got, reason="" if got else f"{name} returned False")
    passed, reason, *score = got
    return Verdict(name, bool(passed), float(score[0]) if score else None, str(reason))


@dataclass(frozen=True)
class Check:
    params: type[Params]
    # None for the model-based checks, which quality.semantic runs.
    run: Callable[[Answer, Any], Verdict] | None
    kinds: tuple[str, ...] = ("generate", "classify")
    # "built in", or where the operator registered it.
    origin: str = "built in"
    # Set for a registered check: its function, to bind parameters to.
    registration: registry.Registered | None = None


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
    "relevance": Check(RelevanceParams, None, ("generate",)),
    "judge": Check(JudgeParams, None, ("generate",)),
}


class Refused(ValueError):
    """A check declared so that it cannot run here; the message names what is wrong."""


def lookup(name: str) -> Check | None:
    """The built-in check `name`, else the one the operator registered under it (the
    registry loads once), else None. A name is only ever looked up, never imported."""
    if name in CHECKS:
        return CHECKS[name]
    found = registry.installed().get(name)
    if found is None:
        return None
    return Check(RegisteredParams, partial(registered, name), origin=found.origin,
                 registration=found)


def known() -> dict[str, Check]:
    """Every check a spec may name here: the built-in ones, then the registered ones."""
    return {**CHECKS, **{name: c for name in registry.installed()
                         if (c := lookup(name)) is not None}}


def describe() -> list[dict[str, Any]]:
    """Every check a spec may name here, as `nightshift checks` lists them: name, the
    job kinds it applies to, its parameters (each with its default, or required), and
    who provides it."""
    return [{"name": name, "kinds": list(check.kinds), "origin": check.origin,
             "params": _parameters(check)} for name, check in known().items()]


def _parameters(check: Check) -> list[dict[str, Any]]:
    if check.registration is not None:
        taken = list(inspect.signature(check.registration.fn).parameters.values())[1:]
        return [{"name": p.name, "required": p.default is p.empty,
                 "default": None if p.default is p.empty else p.default}
                for p in taken if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return [{"name": k, "required": f.is_required(),
             "default": None if f.is_required() else f.get_default(call_default_factory=True)}
            for k, f in check.params.model_fields.items()]


def _unknown(name: str) -> Refused:
    names = ", ".join(known())
    if name == "custom":
        return Refused(f"check custom: a spec names no code; custom checks are registered by "
                       f"the operator ({registry.WHERE}) and named like built-in ones "
                       f"(known: {names})")
    return Refused(f"unknown check {name!r} (known: {names})")


def validate(name: str, params: dict[str, Any], kind: str, *,
             at_submit: bool = False) -> dict[str, Any]:
    """The check's parameters with their defaults, or a Refused naming what is wrong.
    Only `at_submit` is a blocklist file read: a stored spec holds its words."""
    check = lookup(name)
    if check is None:
        raise _unknown(name)
    if kind not in check.kinds:
        raise Refused(f"check {name!r} does not apply to {kind} jobs")
    model = _params(name, check, params, at_submit=at_submit)
    if check.registration is not None:
        check.registration.bind(params)
    return model.model_dump(exclude_none=True)


def validate_spec(spec: JobSpec, *, at_submit: bool = False) -> JobSpec:
    """The spec's checks with their parameters' defaults filled in, in place. At submit
    every check must be built in or registered where submit runs, and declared right:
    the first that is not raises, naming what is wrong. A stored spec is taken as it is:
    a check a worker cannot run (not registered there, or written wrong into SQL) is
    marked refused, and fails each item's verdict with the reason (`run`), never the
    chunk."""
    for check in spec.checks:
        try:
            check.params = validate(check.name, check.params, spec.kind, at_submit=at_submit)
            if check.name == "json_schema" and spec.json_schema is None:
                raise Refused("check json_schema needs the job's --json-schema")
        except ValueError as exc:
            if at_submit:
                raise
            check.refuse(str(exc))
    return spec


def _params(name: str, check: Check, params: dict[str, Any], *, at_submit: bool) -> Params:
    try:
        model = check.params.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or name
        message = "unknown parameter" if first["type"] == "extra_forbidden" else first["msg"]
        raise Refused(f"check {name}: {where}: {message.removeprefix('Value error, ')}"
                      ) from None
    if isinstance(model, BlocklistParams) and model.file:
        if not at_submit:
            raise Refused("check blocklist: its file is read at submit; a stored spec "
                          "gives the words")
        model = _read_blocklist(model)
    return model


def _read_blocklist(p: BlocklistParams) -> BlocklistParams:
    """Read at submit, so every worker checks against the same list."""
    try:
        with open(p.file or "", encoding="utf-8") as fh:
            words = [line.strip() for line in fh if line.strip()]
    except OSError as exc:
        raise Refused(f"check blocklist: cannot read {p.file}: {exc.strerror}") from None
    return BlocklistParams(words=words or p.words)


def run(checks: list[tuple[str, dict[str, Any]]], answer: Answer) -> list[Verdict]:
    """The cheap checks' verdicts, in the order declared. A check that cannot run here
    (not registered on this worker, declared wrong in a stored spec), raises, or runs
    past its time limit fails its item with the reason, never the chunk; when no other
    answer could pass it (it cannot run here), no retry is spent on it."""
    verdicts = []
    for name, params in checks:
        try:
            check = lookup(name)
            if check is None:
                verdicts.append(Verdict(name, False, retryable=False, reason=(
                    f"check {name!r} is not registered on this worker")))
                continue
            declared = _params(name, check, params, at_submit=False)
            if check.run is not None:
                verdicts.append(check.run(answer, declared))
        except (Refused, registry.RegistryError) as exc:
            verdicts.append(Verdict(name, False, reason=str(exc), retryable=False))
        except registry.CheckFailed as exc:
            verdicts.append(Verdict(name, False, reason=str(exc)))
        except Exception as exc:  # a check's bug fails its item, not the chunk
            verdicts.append(Verdict(name, False, reason=f"the check raised {exc!r}"))
    return verdicts
