"""The job spec: what to ask, of which model, how to sample. Validated in full at submit
(context `at_submit`); a worker takes the stored spec as it is.

The quality bar is data here: each check a name and its parameters. Whether a check may
run, and its parameters with their defaults, are the checks' own business
(`quality.checks.validate_spec`, called at submit and where a worker loads a spec)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from jinja2 import TemplateSyntaxError
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.render import compile_template
from schemas.settings import DEMO_MODEL


class Sampling(BaseModel):
    """Sampling parameters; a row of an OpenAI batch file may override them."""

    model_config = ConfigDict(extra="forbid")

    # 0.7 / 0.9: varied enough that a retry can differ, steady enough to stay on topic.
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    # The job's seed; each item samples with a seed derived from it and the item's id.
    seed: int = 0
    n: int = Field(1, ge=1, le=16)
    stop: list[str] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)

    @model_validator(mode="after")
    def _samples_need_temperature(self) -> Sampling:
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 needs a temperature above 0 (greedy samples are all "
                             "the same)")
        return self


class Example(BaseModel):
    """A few-shot example, sent before each item as a user turn and an assistant turn."""

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str


class CheckSpec(BaseModel):
    """One check of the job's quality bar; written `NAME[:key=value,...]` or as an object."""

    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = {}
    # Why a stored spec's check cannot run here (quality.checks.validate_spec); not stored.
    _refusal: str | None = PrivateAttr(None)

    @property
    def refusal(self) -> str | None:
        return self._refusal

    def refuse(self, reason: str) -> None:
        """Mark the check as one that cannot run here: `JobSpec.check` no longer offers it,
        and its verdict fails each item with the reason."""
        self._refusal = reason

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: object) -> object:
        return parse_check(value) if isinstance(value, str) else value


def parse_check(text: str) -> dict[str, Any]:
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


# What a failed attempt is retried with, in order (see quality.retries).
Step = Literal["resample", "feedback", "constrain"]


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["generate", "classify"] = "generate"
    model: str = DEMO_MODEL
    system: str | None = None
    template: str | None = None
    examples: list[Example] = []
    labels: list[str] = []
    # Generation constrained to JSON that this schema accepts (extraction jobs).
    json_schema: dict[str, Any] | None = None
    sampling: Sampling = Sampling()
    # The quality bar: every answer is checked; one that falls short is asked again, up to
    # `max_attempts` answers in all, each retry one step further along `ladder`.
    checks: list[CheckSpec] = []
    max_attempts: int = Field(3, ge=1, le=10)
    ladder: list[Step] = Field(["resample", "feedback", "constrain"], min_length=1)
    # Documents longer than the context are split by the model's own tokens, neighbours
    # sharing `overlap` tokens. "map_reduce": each piece is answered, then the answers are
    # combined (with `reduce_template`, recursively if need be) into one per document;
    # "per_piece": one answer per piece. A long classification averages its pieces' labels.
    split: Literal["map_reduce", "per_piece"] = "map_reduce"
    overlap: int = Field(64, ge=0, le=1024)
    reduce_template: str | None = None
    # Items per broker message: large enough to amortize a lease, small enough to rebalance.
    chunk_size: int = Field(64, ge=1, le=10_000)
    # A LoRA adapter every request of the job runs with: a directory (made absolute at
    # submit; workers must see the same path) or a Hugging Face repo id. Served only by
    # workers started with --enable-lora.
    lora: str | None = None
    # Rows whose whole request is identical share one answer even when sampled; greedy
    # ones always do (schemas.dedup).
    dedup: bool = False

    @field_validator("template", "reduce_template")
    @classmethod
    def _template_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_template(value)
            except TemplateSyntaxError as exc:
                where = f"(line {exc.lineno})"
                raise ValueError(f"template does not compile: {exc.message} {where}") from None
        return value

    @field_validator("lora")
    @classmethod
    def _lora_is_an_adapter(cls, value: str | None, info: ValidationInfo) -> str | None:
        """At submit (context `at_submit`), a local adapter must be there now: a worker
        finding it missing could only fail every item. A stored spec is not checked again:
        the workers' file system is not the producer's."""
        if value is None or not (info.context or {}).get("at_submit"):
            return value
        return adapter_dir(value)

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value) or any(not label.strip() for label in value):
            raise ValueError("labels must be distinct and non-empty")
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                validator_for(value).check_schema(value)
            except SchemaError as exc:
                where = "/".join(str(p) for p in exc.path) or "top level"
                raise ValueError(f"JSON Schema is invalid at {where}: {exc.message}") from None
        return value

    @model_validator(mode="after")
    def _classify_needs_labels(self) -> JobSpec:
        if self.kind == "classify" and len(self.labels) < 2:
            raise ValueError("a classify job needs at least two --label values")
        return self

    def check_list(self) -> list[tuple[str, dict[str, Any]]]:
        return [(c.name, c.params) for c in self.checks]

    def check(self, name: str) -> dict[str, Any] | None:
        """The parameters of check `name`, if the job declares it (and it can run here:
        quality.checks.validate_spec fills in their defaults and notes what cannot)."""
        return next((c.params for c in self.checks if c.name == name and not c.refusal), None)


def adapter_dir(value: str) -> str:
    """A LoRA adapter as a worker should load it: an existing directory holding
    `adapter_config.json` (absolute), or a name that is not a path (a Hugging Face repo)."""
    path = Path(value).expanduser()
    if not path.exists():
        if value.startswith(("/", ".", "~")) or value.count("/") != 1:
            raise ValueError(f"LoRA adapter {value}: no such directory")
        return value
    if not (path / "adapter_config.json").is_file():
        raise ValueError(f"LoRA adapter {value}: no adapter_config.json in it "
                         "(save it with peft's save_pretrained)")
    return str(path.resolve())
