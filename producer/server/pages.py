"""The dashboard: server-rendered pages over the same SQL the CLI reads (jobs, a job's
report, its results a page at a time, an item's ladder, the review queue), behind a login
with an API key.
An admin key sees every job; any other key the jobs of its own Batch API batches.
Pages of a running job reload themselves every few seconds; there is no front-end build."""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy import text as sql_text
from starlette.templating import Jinja2Templates

from producer import reviews, status
from producer.server import keys, logins
from producer.server.keys import Caller
from quality import html, report
from schemas import db
from schemas.errors import NightshiftError
from schemas.settings import Settings
from schemas.spec import JobSpec
from schemas.states import JobState, ReviewVerdict
from schemas.tables import Attempt, Batch, Item, Job, Piece, Result, Review

PAGE_ROWS = 50
QUEUE_TITLES = {"needs_review": "Labels kept for review", "failed": "Failed answers",
                "sample": "A spot check of passed answers"}
STATES = (JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING, *JobState.FINAL)
REFRESH_SECONDS = 5
# The login form's own cookie: its token, brought back with the key.
PRE_LOGIN = "nightshift_login_form"
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.globals["pct"] = lambda v: "-" if v is None else f"{v:.1%}"
templates.env.filters["duration"] = lambda s: f"{s} s" if s < 90 else (
    f"{s // 60} min" if s < 5400 else f"{s / 3600:.1f} h")


class Refused(Exception):
    """A page the caller may not see, or that is not there: a 404 page either way."""


def mount(app: FastAPI, settings: Settings) -> None:
    url = settings.database_url

    def page(request: Request, name: str, who: Caller | None, *, status_code: int = 200,
             **context: Any) -> HTMLResponse:
        token = request.cookies.get(logins.COOKIE)
        return templates.TemplateResponse(request, name, {
            "who": who, "form_token": logins.form_token(token) if token else "", **context},
            status_code=status_code)

    def logged_in(request: Request) -> Caller | None:
        return logins.caller(url, request.cookies.get(logins.COOKIE))

    def posted(request: Request, form_token: str) -> Caller | None:
        """The caller of a form post that carries its login's form token, else None."""
        token = request.cookies.get(logins.COOKIE)
        return logged_in(request) if logins.form_ok(token, form_token) else None

    def to_login() -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(Refused)
    def _not_found(request: Request, exc: Refused) -> HTMLResponse:
        return page(request, "missing.html", logged_in(request), what=str(exc), status_code=404)

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> Response:
        return RedirectResponse("/jobs" if logged_in(request) else "/login", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return login_page(request)

    def login_page(request: Request, *, error: str | None = None, status_code: int = 200
                   ) -> HTMLResponse:
        """The form, with a token that its post must bring back in a cookie of this site:
        another site's page cannot log the browser in with a key of its choosing."""
        pre = secrets.token_urlsafe(16)
        shown = page(request, "login.html", None, error=error, login_token=pre,
                     status_code=status_code)
        shown.set_cookie(PRE_LOGIN, pre, httponly=True, samesite="strict",
                         secure=_https(request))
        return shown

    @app.post("/login")
    def login(request: Request, key: Annotated[str, Form()],
              login_token: Annotated[str, Form()] = "") -> Response:
        pre = request.cookies.get(PRE_LOGIN) or ""
        if not (pre and hmac.compare_digest(pre, login_token)):
            return login_page(request, status_code=400,
                              error="The form had expired: log in again.")
        token = logins.start(url, key.strip())
        if token is None:
            return login_page(request, status_code=401,
                              error="That key is not a live API key (nightshift keys list).")
        done = RedirectResponse("/jobs", status_code=303)
        done.set_cookie(logins.COOKIE, token, max_age=int(logins.LASTS.total_seconds()),
                        httponly=True, samesite="strict", secure=_https(request))
        done.delete_cookie(PRE_LOGIN)
        return done

    @app.post("/logout")
    def logout(request: Request, form_token: Annotated[str, Form()] = "") -> Response:
        token = request.cookies.get(logins.COOKIE)
        if token and logins.form_ok(token, form_token):
            logins.end(url, token)
        done = to_login()
        done.delete_cookie(logins.COOKIE)
        return done

    @app.get("/jobs", response_class=HTMLResponse)
    def jobs(request: Request, state: str | None = None, model: str | None = None
             ) -> Response:
        who = logged_in(request)
        if who is None:
            return to_login()
        shown = status.all_jobs(url, limit=200, state=state or None, model=model or None,
                                owner=None if who.admin else who.key_id)
        now = datetime.now(UTC)
        for job in shown:
            job.update(_progress(job, now))
        running = any(job["state"] in (JobState.QUEUED, JobState.RUNNING) for job in shown)
        return page(request, "jobs.html", who, jobs=shown, state=state or "",
                    model=model or "", states=STATES,
                    refresh=REFRESH_SECONDS if running else None)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job(request: Request, job_id: str) -> Response:
        who = logged_in(request)
        if who is None:
            return to_login()
        _visible(url, who, job_id)
        shown = status.status(url, job_id)
        shown.update(_progress(shown, datetime.now(UTC)))
        from worker import presence

        serving = [w for w in presence.listed(url) if w["model"] == shown["model"]]
        running = shown["state"] in (JobState.QUEUED, JobState.RUNNING)
        # The report reads every result: not on each reload of a running job, but asked.
        asked = not running or request.query_params.get("report") == "1"
        summary = html.summary(report.build(url, job_id)) if asked else None
        return page(request, "job.html", who, job=shown, report_summary=summary,
                    workers=serving, batch=_batch_of(url, job_id),
                    notice=request.query_params.get("notice"),
                    refresh=REFRESH_SECONDS if running and not asked else None)

    @app.post("/jobs/{job_id}/cancel")
    def cancel(request: Request, job_id: str, form_token: Annotated[str, Form()] = ""
               ) -> Response:
        who = posted(request, form_token)
        if who is None:
            return to_login()
        _visible(url, who, job_id)
        batch = _batch_of(url, job_id)
        if batch is not None:  # as the Batch API cancels it, so that the batch says so too
            from producer.server import batches

            before = status.status(url, job_id)["state"]
            batches.cancel(settings, who, batch)
            stopped = before not in JobState.FINAL
        else:
            stopped, _ = status.cancel(url, job_id)
        notice = "Cancelled." if stopped else "The job had already ended."
        return RedirectResponse(f"/jobs/{job_id}?notice={quote(notice)}", status_code=303)

    @app.post("/jobs/{job_id}/retry")
    def retry(request: Request, job_id: str, form_token: Annotated[str, Form()] = "",
              failed: Annotated[bool, Form()] = False,
              needs_review: Annotated[bool, Form()] = False,
              max_attempts: Annotated[str, Form()] = "",
              checks: Annotated[str, Form()] = "") -> Response:
        """`nightshift retry`: `checks` one a line (NAME[:key=value,...]), as `--check`."""
        from producer.retry import retry as run_again

        who = posted(request, form_token)
        if who is None:
            return to_login()
        _visible(url, who, job_id)
        if not (failed or needs_review):
            notice = "Tick what to run again: the failed answers, those kept for review, or both."
            return RedirectResponse(f"/jobs/{job_id}?notice={quote(notice)}", status_code=303)
        try:
            budget = int(max_attempts) if max_attempts.strip() else None
            done = run_again(url, settings.broker_url, job_id, failed=failed,
                             needs_review=needs_review, max_attempts=budget,
                             checks=[c.strip() for c in checks.splitlines() if c.strip()])
            notice = (f"Running {done.items} item{'s' if done.items > 1 else ''} again."
                      if done.items else "Nothing to run again.")
        except ValueError:
            notice = f"max attempts {max_attempts!r}: a whole number, 1 to 10"
        except NightshiftError as exc:
            notice = str(exc)
        return RedirectResponse(f"/jobs/{job_id}?notice={quote(notice)}", status_code=303)

    @app.get("/jobs/{job_id}/results", response_class=HTMLResponse)
    def results(request: Request, job_id: str,
                item_status: Annotated[str | None, Query(alias="status")] = None,
                quality: str | None = None, label: str | None = None,
                check: str | None = None, text: str | None = None, after: int = -1
                ) -> Response:
        """A page of results after item `after`, filtered: by status, quality, label, a
        check the kept answer failed, and words its answer contains."""
        who = logged_in(request)
        if who is None:
            return to_login()
        _visible(url, who, job_id)
        filters: dict[str, Any] = {"status": item_status or "", "quality": quality or "",
                   "label": label or "", "check": check or "", "text": text or ""}
        with db.reader(url) as session:
            rows = session.execute(_results(session, job_id, after, **filters)).all()
        more = len(rows) > PAGE_ROWS
        rows = rows[:PAGE_ROWS]
        return page(request, "results.html", who, job_id=job_id, rows=rows, **filters,
                    following=rows[-1].item_seq if more else None)

    @app.get("/jobs/{job_id}/items/{seq}", response_class=HTMLResponse)
    def item(request: Request, job_id: str, seq: int) -> Response:
        who = logged_in(request)
        if who is None:
            return to_login()
        _visible(url, who, job_id)
        return page(request, "item.html", who, **_item(url, job_id, seq), queue=None,
                    notice=request.query_params.get("notice"))

    @app.get("/jobs/{job_id}/review", response_class=HTMLResponse)
    def review_queue(request: Request, job_id: str, queue: str = reviews.QUEUES[0],
                     after: int = -1) -> Response:
        """The queue's next item, with the verdict's form; a page saying it is done."""
        who = logged_in(request)
        if who is None:
            return to_login()
        _visible(url, who, job_id)
        found = reviews.next_in_queue(url, job_id, queue=queue, after=after)
        notice = request.query_params.get("notice")
        if found is None:
            return page(request, "reviewed.html", who, job_id=job_id, notice=notice)
        name, seq = found
        return page(request, "item.html", who, **_item(url, job_id, seq), queue=name,
                    queue_title=QUEUE_TITLES[name], notice=notice)

    @app.post("/jobs/{job_id}/items/{seq}/review")
    def review(request: Request, job_id: str, seq: int,
               verdict: Annotated[str, Form()], form_token: Annotated[str, Form()] = "",
               correction: Annotated[str, Form()] = "", note: Annotated[str, Form()] = "",
               queue: Annotated[str, Form()] = "") -> Response:
        """A verdict; back to the queue's next item (or to the item, when not queued)."""
        who = posted(request, form_token)
        if who is None:
            return to_login()
        _visible(url, who, job_id)
        try:
            # The form sends its correction field with every button: it counts for one.
            corrected = correction if verdict == ReviewVerdict.CORRECTED else None
            reviews.record(url, job_id, seq, verdict, correction=corrected, note=note,
                           reviewer=keys.name_of(url, who.key_id))
            notice, after = f"Item {seq}: {verdict}.", seq
        except NightshiftError as exc:
            notice, after = str(exc), seq - 1  # the same item again
        if queue:
            return RedirectResponse(f"/jobs/{job_id}/review?queue={quote(queue)}&after={after}"
                                    f"&notice={quote(notice)}", status_code=303)
        return RedirectResponse(f"/jobs/{job_id}/items/{seq}?notice={quote(notice)}",
                                status_code=303)


def _results(session: Any, job_id: str, after: int, *, status: str, quality: str, label: str,
             check: str, text: str) -> Any:
    """The results page's query: keyset paged by item seq, the filters given (empty: not)."""
    query = (select(Result.item_seq, Item.key, Result.status, Result.quality, Result.label,
                    Result.output, Result.error, Result.attempts, Review.verdict)
             .join(Item, (Item.job_id == Result.job_id) & (Item.seq == Result.item_seq))
             .outerjoin(Review, (Review.job_id == Result.job_id)
                        & (Review.item_seq == Result.item_seq))
             .where(Result.job_id == job_id, Result.item_seq > after)
             .order_by(Result.item_seq).limit(PAGE_ROWS + 1))
    for column, value in ((Result.status, status), (Result.quality, quality),
                          (Result.label, label)):
        if value:
            query = query.where(column == value)
    if text:
        query = query.where(Result.output.contains(text, autoescape=True))
    if check:
        # The kept answer's verdicts are a JSON list: one of them names the check, failed.
        failed = (
            "EXISTS (SELECT 1 FROM json_array_elements(results.checks) AS v "
            "WHERE v->>'name' = :check AND v->>'passed' = 'false')"
            if session.get_bind().dialect.name == "postgresql" else
            "EXISTS (SELECT 1 FROM json_each(results.checks) AS v "
            "WHERE json_extract(v.value, '$.name') = :check "
            "AND json_extract(v.value, '$.passed') = 0)")
        query = query.where(sql_text(failed).bindparams(check=check))
    return query


def _https(request: Request) -> bool:
    """Whether the browser came over https (here, or to a proxy in front)."""
    return "https" in (request.url.scheme, request.headers.get("x-forwarded-proto"))


def _item(url: str, job_id: str, seq: int) -> dict[str, Any]:
    """An item's page: its request, kept answer, ladder, a long document's pieces, its
    review, and the job's labels."""
    with db.reader(url) as session:
        found = session.get(Item, (job_id, seq))
        if found is None:
            raise Refused(f"item {seq} of job {job_id}")
        result = session.get(Result, (job_id, seq))
        attempts = list(session.scalars(select(Attempt).where(
            Attempt.job_id == job_id, Attempt.item_seq == seq)
            .order_by(Attempt.piece, Attempt.attempt)))
        pieces = list(session.scalars(select(Piece).where(
            Piece.job_id == job_id, Piece.item_seq == seq).order_by(Piece.piece)))
        spec = session.scalar(select(Job.spec).where(Job.id == job_id))
        session.expunge_all()
    return {"job_id": job_id, "item": found, "result": result, "attempts": attempts,
            "pieces": pieces,
            "review": reviews.of_item(url, job_id, seq),
            "labels": JobSpec.model_validate(spec).labels}


def _visible(url: str, who: Caller, job_id: str) -> None:
    """Refused unless the job is there and the caller may see it."""
    with db.reader(url) as session:
        there = session.scalar(select(Job.id).where(Job.id == job_id))
        owner = session.scalar(select(Batch.owner).where(Batch.job_id == job_id))
    if there is None or not who.owns(owner):
        raise Refused(f"job {job_id}")


def _batch_of(url: str, job_id: str) -> str | None:
    with db.reader(url) as session:
        return session.scalar(select(Batch.id).where(Batch.job_id == job_id))


def _progress(job: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Done share, items/s and generated tokens/s since the start, and an ETA while the job
    runs."""
    total = job["total"] or 0
    done = sum(job.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
    answered = job.get("succeeded", 0) + job.get("failed", 0)
    shown: dict[str, Any] = {"done": done, "percent": round(100 * done / total, 1)
                             if total else 0.0, "items_per_s": None, "tokens_per_s": None,
                             "eta_s": None, "pass_rate": job.get("succeeded", 0) / answered
                             if answered else None}
    started = job.get("started_at")
    if started:
        end = job.get("finished_at")
        elapsed = ((datetime.fromisoformat(end) if end else now)
                   - datetime.fromisoformat(started)).total_seconds()
        if elapsed > 0 and done:
            shown["items_per_s"] = round(done / elapsed, 2)
            shown["tokens_per_s"] = round(job.get("completion_tokens", 0) / elapsed, 1)
            if job["state"] == JobState.RUNNING:
                shown["eta_s"] = round((total - done) / (done / elapsed))
    return shown
