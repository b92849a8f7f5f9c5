"""Pre-flight (`submit --dry-run`): everything a job would meet, found before it exists.

Every row is read and validated as `submit` reads it, then rendered and tokenized as
the worker will (worker.prompts.build with the model's own tokenizer and chat
template), so the counts are the engine's counts. Nothing is written: not the
database (it is only read, for the calibration), not the broker.

The ETA divides the tokens the job may generate by a calibration measured on this
deployment: the completion tokens per second the workers of this model wrote in their
recent results. It is an upper bound (every answer at its token limit); a typical
figure uses the recent answers' mean length.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from producer import documents, readers
from schemas import db
from schemas.errors import first_line
from schemas.spec import JobSpec
from schemas.tables import Job, Result
from worker import models
from worker.prompts import build, sampling_for

SHOWN = 20
# Results the calibration looks at, newest first, and how recently a worker must have
# written one to count as running now.
CALIBRATION_RESULTS = 5_000
ACTIVE_WITHIN = timedelta(minutes=10)
UNBOUNDED = 1 << 62


@dataclass
class Calibration:
    tokens_per_second: float
    workers: int
    results: int
    mean_completion_tokens: float


@dataclass
class Report:
    model: str
    context: int
    rows: int = 0
    malformed_count: int = 0
    malformed: list[dict[str, Any]] = field(default_factory=list)
    duplicate_count: int = 0
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    over_long_count: int = 0
    over_long: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    max_new_tokens: int = 0
    calibration: Calibration | None = None
    calibration_note: str = "no calibration yet"
    eta_seconds: float | None = None
    eta_typical_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        lines = [f"rows            {self.rows:,} valid; {self.malformed_count:,} malformed, "
                 f"{self.duplicate_count:,} duplicate ids, {self.over_long_count:,} over-long"]
        lines += [f"  line {m['line']}: {m['reason']}" for m in self.malformed]
        lines += [f"  line {d['line']}: duplicate id {d['id']!r}" for d in self.duplicates]
        lines += [f"  line {o['line']}: {o['reason']}" for o in self.over_long]
        lines += [f"prompt tokens   {self.prompt_tokens:,}",
                  f"max new tokens  {self.max_new_tokens:,}",
                  f"context         {self.context:,} tokens ({self.model})"]
        c = self.calibration
        if c is None or self.eta_seconds is None:
            lines.append(f"ETA             unknown: {self.calibration_note}")
        else:
            lines.append(f"throughput      {c.tokens_per_second:,.0f} generated tokens/s over "
                         f"{c.workers} worker(s) (last {c.results:,} results)")
            typical = (f"; typically {_duration(self.eta_typical_seconds)}"
                       if self.eta_typical_seconds is not None else "")
            lines.append(f"ETA             at most {_duration(self.eta_seconds)}{typical}")
        return "\n".join(lines)


def preflight(settings: Any, spec: JobSpec, path: Path, *, fmt: str = "auto",
              tokenizer: Any = None, context: int | None = None,
              max_document_bytes: int = documents.MAX_BYTES) -> Report:
    models.check_name(spec.model)
    model_path = models.resolve(spec.model, settings.model_dir)
    tokenizer = tokenizer or load_tokenizer(model_path)
    report = Report(spec.model, context or context_length(model_path))
    input_format = readers.detect_format(path) if fmt == "auto" else fmt
    label_budget = _label_budget(tokenizer, spec)
    seen: set[str] = set()
    for row in readers.read(path, input_format, spec.template,
                            max_document_bytes=max_document_bytes):
        if not isinstance(row, readers.Row):
            report.malformed_count += 1
            _keep(report.malformed, {"line": getattr(row, "line", None), "reason": str(row)})
        elif row.key in seen:
            report.duplicate_count += 1
            _keep(report.duplicates, {"line": row.line, "id": row.key})
        else:
            seen.add(row.key)
            _measure(report, row, spec, tokenizer, label_budget)
    report.calibration, report.calibration_note = calibrate(settings.database_url, spec.model)
    _eta(report)
    return report


def _measure(report: Report, row: readers.Row, spec: JobSpec, tokenizer: Any,
             label_budget: int) -> None:
    try:
        chosen = sampling_for(spec, row.payload)
        prompt = build(tokenizer, spec, row.payload, UNBOUNDED, chosen.max_tokens)
    except (KeyError, ValueError, TypeError) as exc:
        report.malformed_count += 1
        _keep(report.malformed, {"line": row.line, "reason": f"cannot render: {exc}"})
        return
    report.rows += 1
    used = len(prompt.token_ids)
    report.prompt_tokens += used
    wanted = label_budget if spec.kind == "classify" else chosen.max_tokens
    room = max(report.context - used, 0)
    if used + wanted > report.context:
        report.over_long_count += 1
        why = (f"prompt is {used} tokens, the context {report.context}: it would fail"
               if room == 0 else
               f"prompt {used} + max_tokens {wanted} > context {report.context}: "
               f"the answer is cut to {room} tokens")
        _keep(report.over_long, {"line": row.line, "id": row.key, "prompt_tokens": used,
                                 "max_tokens": wanted, "fails": room == 0, "reason": why})
    samples = 1 if spec.kind == "classify" else chosen.n
    report.max_new_tokens += min(wanted, room) * samples


def _label_budget(tokenizer: Any, spec: JobSpec) -> int:
    """What a classify item may generate: its longest label, plus the end (as the worker)."""
    return max((len(tokenizer.encode(label, add_special_tokens=False))
                for label in spec.labels), default=0) + 2


def _keep(shown: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    if len(shown) < SHOWN:
        shown.append(entry)


def calibrate(db_url: str, model: str) -> tuple[Calibration | None, str]:
    """Generated tokens per second of the workers that ran `model` lately, summed over the
    workers that were running at the end; (None, why) when there is nothing to measure."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        return None, "no calibration yet (no database)"
    try:
        with db.reader(db_url) as session:
            rows = session.execute(select(Result.worker, Result.created_at,
                                          Result.completion_tokens)
                                   .join(Job, Job.id == Result.job_id).where(Job.model == model)
                                   .order_by(Result.created_at.desc())
                                   .limit(CALIBRATION_RESULTS)).all()
    except SQLAlchemyError as exc:
        return None, f"no calibration (database: {first_line(exc)})"
    if not rows:
        return None, "no calibration yet (no results for this model)"
    newest = rows[0][1]
    by_worker: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    for worker, created_at, tokens in rows:
        by_worker[worker or "?"].append((created_at, tokens or 0))
    rates = [_rate(written) for written in by_worker.values()
             if newest - max(t for t, _ in written) <= ACTIVE_WITHIN]
    measured = [r for r in rates if r is not None]
    if not measured:
        return None, "no calibration yet (too few results to time)"
    mean = sum(t for _, _, t in rows) / len(rows)
    return Calibration(sum(measured), len(measured), len(rows), mean), "measured"


def _rate(written: list[tuple[datetime, int]]) -> float | None:
    """Tokens per second of one worker: results are written a chunk at a time, so the
    tokens of its first write were generated before the measured span began."""
    first = min(t for t, _ in written)
    span = (max(t for t, _ in written) - first).total_seconds()
    if span < 1.0:
        return None
    return sum(n for t, n in written if t > first) / span


def _eta(report: Report) -> None:
    c = report.calibration
    if c is None or c.tokens_per_second <= 0:
        return
    report.eta_seconds = report.max_new_tokens / c.tokens_per_second
    typical = min(report.max_new_tokens, report.rows * c.mean_completion_tokens)
    report.eta_typical_seconds = typical / c.tokens_per_second


def load_tokenizer(model_path: str) -> Any:
    """The model's tokenizer; the fast class directly when the directory has its file
    (the same tokenizer AutoTokenizer picks, without importing torch)."""
    if (Path(model_path) / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(model_path)
    from transformers import AutoTokenizer  # imports torch: only when it must

    return AutoTokenizer.from_pretrained(model_path)


def context_length(model_path: str) -> int:
    """The model's context window, as vLLM derives it when --max-model-len is not given."""
    config = Path(model_path) / "config.json"
    if config.is_file():
        values = json.loads(config.read_text(encoding="utf-8"))
    else:
        from transformers import AutoConfig

        values = AutoConfig.from_pretrained(model_path).to_dict()
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if isinstance(values.get(key), int):
            return int(values[key])
    return 2048


def _duration(seconds: float | None) -> str:
    total = int(round(seconds or 0))
    hours, rest = divmod(total, 3600)
    return (f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s")
