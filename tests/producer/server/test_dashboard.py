"""The dashboard in a real headless browser (Debian's chromium and chromedriver, driven by
Selenium): log in with a key, watch a job's progress move, open it, filter its results,
open an item and read its ladder, cancel a running job and run a finished one's failed
items again. And what a visitor may not do: see pages without logging in, see another
key's job, post a form without its token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import browser_fixture, go, login, text, wait_text  # noqa: F401 - a fixture
from conftest import Invoke, Server, Stack, lease
from sqlalchemy import select

from producer.server import logins
from producer.submit import submit
from quality.checks import Verdict
from quality.retries import Step
from schemas import db
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Batch, Item, Review
from worker.attempts import Outcome, Try
from worker.chunks import write

DOCS = Path(__file__).resolve().parents[3] / "docs"


def _job(stack: Stack, tmp_path: Path, n: int = 6) -> str:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"row-{i}", "prompt": f"p{i}"}) + "\n"
                            for i in range(n)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    return submit(settings, JobSpec(chunk_size=2, checks=["non_empty"]), path).job_id  # type: ignore[list-item]


def _write_chunk(stack: Stack, job: str, seq: int, *, fail: bool = False) -> None:
    first = 2 * seq
    outcomes = []
    for item in (first, first + 1):
        if fail and item == first:
            tries = [Try(n, Step.FIRST if n == 1 else Step.RESAMPLE, f"p{item}",
                         {"temperature": 0.3 * (n - 1), "seed": n}, 3, output="",
                         verdicts=[Verdict("non_empty", False, reason="the answer is empty")],
                         next_reason="non_empty: the answer is empty"
                         if n < 2 else None) for n in (1, 2)]
            outcomes.append(Outcome(item, "failed", output="", error="non_empty: empty",
                                    quality="failed", attempts=2, attempt=2, tries=tries,
                                    checks=[{"name": "non_empty", "passed": False,
                                             "score": None, "reason": "empty"}]))
        else:
            tries = [Try(1, Step.FIRST, f"p{item}", {"seed": 1}, 3, output=f"answer {item}")]
            outcomes.append(Outcome(item, "succeeded", output=f"answer {item}",
                                    quality="passed", attempt=1, tries=tries,
                                    checks=[{"name": "non_empty", "passed": True,
                                             "score": None, "reason": None}]))
    write(stack.db_url, lease(stack.db_url, job, seq), outcomes)


def test_a_morning_in_the_dashboard(browser: Any, server: Server, stack: Stack,
                                    tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    job = _job(stack, tmp_path)
    _write_chunk(stack, job, 0)
    login(browser, server, server.key("operator", admin=True))
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job}"]')
    assert "2/6" in row.text and "running" in row.text

    go(browser, browser.find_element(By.LINK_TEXT, job[:12]))
    assert text(browser, "progress") == "2/6"
    _write_chunk(stack, job, 1, fail=True)  # the page reloads itself while the job runs
    wait_text(browser, "progress", "4/6")
    if stack.name == "sqlite":
        browser.save_screenshot(str(DOCS / "dashboard-job.png"))
    _write_chunk(stack, job, 2)
    wait_text(browser, "state", "completed")
    assert text(browser, "failed") == "1"

    go(browser, browser.find_element(By.ID, "results"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.row")) == 6
    Select(browser.find_element(By.ID, "status")).select_by_visible_text("failed")
    go(browser, browser.find_element(By.ID, "filter"))
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.row")
    assert len(rows) == 1 and "row-2" in rows[0].text
    for query, keys in (("check=non_empty", ["row-2"]), ("text=answer%204", ["row-4"]),
                        ("text=answer", ["row-0", "row-1", "row-3", "row-4", "row-5"])):
        browser.get(f"{server.url}/jobs/{job}/results?{query}")
        assert [r.text.split()[1] for r in browser.find_elements(By.CSS_SELECTOR, "tr.row")] \
            == keys, query
    browser.get(f"{server.url}/jobs/{job}/results?status=failed")

    go(browser, browser.find_element(By.LINK_TEXT, "2"))
    attempts = browser.find_elements(By.CSS_SELECTOR, "tr.attempt")
    assert [a.text.split()[1] for a in attempts] == ["1", "2"]
    assert "non_empty: the answer is empty" in attempts[0].text
    assert '"prompt": "p2"' in text(browser, "request")
    if stack.name == "sqlite":
        browser.save_screenshot(str(DOCS / "dashboard-item.png"))

    browser.get(f"{server.url}/jobs/{job}")
    go(browser, browser.find_element(By.ID, "retry"))
    assert text(browser, "notice") == "Running 1 item again."
    assert text(browser, "state") == "queued"
    with db.session(stack.db_url) as session:
        assert session.scalar(select(Item.status).where(Item.job_id == job, Item.seq == 2)) \
            == "pending"

    browser.find_element(By.ID, "cancel").click()  # the page may reload itself first
    wait_text(browser, "notice", "Cancelled.")
    assert text(browser, "state") == "cancelled"
    browser.get(f"{server.url}/jobs")
    if stack.name == "sqlite":
        browser.save_screenshot(str(DOCS / "dashboard-jobs.png"))


def test_a_key_sees_only_its_own_jobs_and_a_wrong_key_is_refused(
        browser: Any, server: Server, stack: Stack, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    cli_job = _job(stack, tmp_path)
    own = _job(stack, tmp_path)
    key = server.key("team")
    from producer.server import keys

    owner = keys.authenticate(stack.db_url, key)
    assert owner is not None
    with db.session(stack.db_url) as session, session.begin():
        session.add(Batch(id="batch_own", owner=owner.key_id, job_id=own,
                          input_file_id="file_1", endpoint="/v1/chat/completions",
                          completion_window="24h"))

    browser.delete_all_cookies()
    browser.get(f"{server.url}/login")
    browser.find_element(By.ID, "key").send_keys("ns-not-a-key")
    go(browser, browser.find_element(By.ID, "login"))
    assert "not a live API key" in text(browser, "error")

    login(browser, server, key)
    listed = {r.get_attribute("data-job") for r in
              browser.find_elements(By.CSS_SELECTOR, "tr.job")}
    assert own in listed and cli_job not in listed
    browser.get(f"{server.url}/jobs/{cli_job}")
    assert "Not found" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(f"{server.url}/jobs/{own}/items/999")
    assert "Not found" in browser.find_element(By.TAG_NAME, "h1").text


def test_pages_and_forms_need_a_login_and_its_form_token(server: Server, stack: Stack,
                                                         tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    with httpx.Client(base_url=server.url, follow_redirects=False) as visitor:
        for path in ("/jobs", f"/jobs/{job}", f"/jobs/{job}/results", f"/jobs/{job}/items/0"):
            assert visitor.get(path).headers["location"] == "/login"
        token = logins.start(stack.db_url, server.key("ops", admin=True))
        assert token is not None
        visitor.cookies.set(logins.COOKIE, token)
        assert visitor.get(f"/jobs/{job}").status_code == 200
        # A post another site's page makes the browser send: the cookie, but no form token.
        refused = visitor.post(f"/jobs/{job}/cancel", data={"form_token": "forged"})
        assert refused.headers["location"] == "/login"
        assert visitor.get(f"/jobs/{job}").status_code == 200
        from producer.status import status

        assert status(stack.db_url, job)["state"] == "queued"
        done = visitor.post(f"/jobs/{job}/cancel",
                            data={"form_token": logins.form_token(token)})
        assert done.status_code == 303 and status(stack.db_url, job)["state"] == "cancelled"


def test_three_reviews_by_keyboard_reach_sql_results_and_the_report(
        browser: Any, server: Server, stack: Stack, run: Invoke, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"text {i}"}) + "\n"
                            for i in range(4)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    spec = JobSpec(kind="classify", labels=["positive", "negative"], chunk_size=4,
                   checks=["confidence"])  # type: ignore[list-item]
    job = submit(settings, spec, path).job_id
    write(stack.db_url, lease(stack.db_url, job, 0), [
        Outcome(i, "succeeded", label="positive", output="positive",
                quality="passed" if i == 3 else "needs_review") for i in range(4)])

    login(browser, server, server.key("reviewer", admin=True))
    browser.get(f"{server.url}/jobs/{job}")
    go(browser, browser.find_element(By.ID, "review"))
    for seq, (key, verdict) in enumerate((("a", "accepted"), ("r", "rejected"))):
        assert "Labels kept for review" in text(browser, "queue")
        go(browser, browser.find_element(By.TAG_NAME, "body"), keys=key)
        wait_text(browser, "notice", f"Item {seq}: {verdict}.")
    browser.find_element(By.TAG_NAME, "body").send_keys("c")  # a label, then Correct
    Select(browser.find_element(By.ID, "correction")).select_by_visible_text("negative")
    browser.find_element(By.ID, "note").send_keys("sarcasm")
    go(browser, browser.find_element(By.ID, "correct"))
    assert text(browser, "notice") == "Item 2: corrected."
    assert browser.find_element(By.ID, "done").is_displayed()
    if stack.name == "sqlite":
        browser.get(f"{server.url}/jobs/{job}/items/2")
        browser.save_screenshot(str(DOCS / "dashboard-review.png"))

    with db.session(stack.db_url) as session:
        stored = session.execute(select(Review.item_seq, Review.verdict, Review.correction,
                                        Review.note).where(Review.job_id == job)
                                 .order_by(Review.item_seq)).all()
    assert stored == [(0, "accepted", None, None), (1, "rejected", None, None),
                      (2, "corrected", "negative", "sarcasm")]
    exported = [json.loads(x) for x in run("results", job).stdout.splitlines()]
    assert [(r["label"], r["review"], r["reviewed_label"]) for r in exported] == [
        ("positive", "accepted", None), ("positive", "rejected", None),
        ("negative", "corrected", "negative"), ("positive", None, None)]
    shown = json.loads(run("report", job, "--json").stdout)
    assert (shown["reviewed"], shown["human_accuracy"]) == (3, pytest.approx(1 / 3, abs=1e-3))


def test_an_item_page_shows_a_long_documents_pieces(server: Server, stack: Stack,
                                                     tmp_path: Path) -> None:
    from schemas.tables import Piece

    job = _job(stack, tmp_path, n=2)
    write(stack.db_url, lease(stack.db_url, job, 0),
          [Outcome(0, "succeeded", output="both halves", pieces=2),
           Outcome(1, "succeeded", output="b")])
    with db.session(stack.db_url) as session, session.begin():
        session.add_all([
            Piece(job_id=job, item_seq=0, piece=1, kind="map", start_char=0, end_char=4000,
                  status="succeeded", output="the first half"),
            Piece(job_id=job, item_seq=0, piece=2, kind="map", start_char=3900,
                  end_char=7400, status="succeeded", output="the second half"),
            Piece(job_id=job, item_seq=0, piece=0, kind="reduce", inputs=[1, 2],
                  status="succeeded", output="both halves")])
    token = logins.start(stack.db_url, server.key("ops", admin=True))
    assert token is not None
    with httpx.Client(base_url=server.url, cookies={logins.COOKIE: token}) as client:
        shown = client.get(f"/jobs/{job}/items/0").text
        plain = client.get(f"/jobs/{job}/items/1").text
    assert "The document's pieces" in shown and "The document's pieces" not in plain
    assert "3900-7400" in shown and "the second half" in shown and "1, 2" in shown


def test_a_review_needs_the_form_token_and_a_job_the_key_may_see(
        server: Server, stack: Stack, tmp_path: Path) -> None:
    job = _job(stack, tmp_path, n=2)
    write(stack.db_url, lease(stack.db_url, job, 0),
          [Outcome(0, "succeeded", output="a"), Outcome(1, "succeeded", output="b")])
    outsider = logins.start(stack.db_url, server.key("outsider"))  # not an admin: no CLI jobs
    operator = logins.start(stack.db_url, server.key("ops", admin=True))
    assert outsider is not None and operator is not None
    review = f"/jobs/{job}/items/0/review"
    with httpx.Client(base_url=server.url, follow_redirects=False) as client:
        client.cookies.set(logins.COOKIE, outsider)
        refused = client.post(review, data={"verdict": "accepted",
                                            "form_token": logins.form_token(outsider)})
        assert refused.status_code == 404 and "Not found" in refused.text
        client.cookies.set(logins.COOKIE, operator)
        forged = client.post(review, data={"verdict": "accepted", "form_token": "forged"})
        assert forged.headers["location"] == "/login"
        with db.session(stack.db_url) as session:
            assert session.scalar(select(Review.verdict).where(Review.job_id == job)) is None
        # The form sends its correction field (the answer, to edit) with every button.
        done = client.post(review, data={"verdict": "accepted", "correction": "a",
                                         "form_token": logins.form_token(operator)})
        assert done.status_code == 303
        with db.session(stack.db_url) as session:
            kept = session.execute(select(Review.verdict, Review.correction, Review.reviewer)
                                   .where(Review.job_id == job)).one()
        assert kept[:2] == ("accepted", None) and kept.reviewer.startswith("ops-")


def test_a_login_needs_the_forms_own_token(server: Server, stack: Stack) -> None:
    from producer.server.pages import PRE_LOGIN

    key = server.key("ops")
    with httpx.Client(base_url=server.url, follow_redirects=False) as visitor:
        # Another site's page posting a key of its choosing: no cookie of this site's form.
        forged = visitor.post("/login", data={"key": key, "login_token": "guessed"})
        assert forged.status_code == 400 and logins.COOKIE not in forged.cookies
        form = visitor.get("/login")
        pre = form.cookies[PRE_LOGIN]
        assert f'value="{pre}"' in form.text
        done = visitor.post("/login", data={"key": key, "login_token": pre})
        assert done.status_code == 303 and done.cookies[logins.COOKIE]
