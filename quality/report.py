"""`nightshift report JOB`: how the job measured against its bar, from SQL alone.

Results and the attempts ledger are streamed, never loaded whole, so a report on a
million items costs one pass over each table.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import case, func, select

from quality.metrics import expected_calibration_error
from schemas.db import reader
from schemas.errors import JobNotFound
from schemas.states import ItemStatus, ReviewVerdict
from schemas.tables import Attempt, Job, Quality, Result, Review

BATCH = 5000


def build(db_url: str, job_id: str) -> dict[str, Any]:
    with reader(db_url) as db:
        job = db.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} in this database")
        kind, state, total = job.kind, job.state, job.total
        report: dict[str, Any] = {"job_id": job_id, "kind": kind, "state": state,
                                  "items": total, "checks": [c["name"] if isinstance(c, dict)
                                                             else c for c in
                                                             job.spec.get("checks", [])]}
        first = _first_tries(db, job_id)
        report.update(_finals(db, job_id, kind))
        report.update(first)
        report.update(_reviews(db, job_id, kind))
    checked = report.pop("_checked")
    report["first_try_pass_rate"] = _rate(first.pop("_first_passed"), checked)
    report["final_pass_rate"] = _rate(report.pop("_passed"), checked)
    report["needs_review"] = report.pop("_review")
    report["checked_items"] = checked
    return report


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _first_tries(db: Any, job_id: str) -> dict[str, Any]:
    failures: Counter[str] = Counter()
    passed = 0
    rows = db.execute(select(Attempt.checks, Attempt.passed).where(
        Attempt.job_id == job_id, Attempt.attempt == 1).execution_options(yield_per=BATCH))
    for checks, ok in rows:
        passed += bool(ok)
        failures.update(v["name"] for v in checks or [] if v["passed"] is False)
    first, retries = db.execute(select(*(
        func.coalesce(func.sum(case((cond, Attempt.completion_tokens), else_=0)), 0)
        for cond in (Attempt.attempt == 1, Attempt.attempt > 1))
    ).where(Attempt.job_id == job_id)).one()
    return {"_first_passed": passed, "first_try_failures_by_check": dict(failures.most_common()),
            "tokens": {"first_try": int(first), "retries": int(retries)}}


def _reviews(db: Any, job_id: str, kind: str) -> dict[str, Any]:
    """What people said in the review queue: how often they agreed with the checks (a
    passed answer accepted, a failed one rejected or corrected; answers kept for review
    left out, the checks took no side) and, for labels, how often the label was right."""
    agreed = judged = right = 0
    reviewed = 0
    rows = db.execute(select(Review.verdict, Review.correction, Result.status,
                             Result.quality, Result.label)
                      .join(Result, (Result.job_id == Review.job_id)
                            & (Result.item_seq == Review.item_seq))
                      .where(Review.job_id == job_id).execution_options(yield_per=BATCH))
    for verdict, correction, status, quality, label in rows:
        reviewed += 1
        accepted = verdict == ReviewVerdict.ACCEPTED
        if quality != Quality.NEEDS_REVIEW:
            judged += 1
            passed = quality == Quality.PASSED if quality else status == ItemStatus.SUCCEEDED
            agreed += passed == accepted
        right += accepted or (verdict == ReviewVerdict.CORRECTED and correction == label)
    return {"reviewed": reviewed, "human_agreement": _rate(agreed, judged),
            "human_accuracy": _rate(right, reviewed) if kind == "classify" else None}


def _finals(db: Any, job_id: str, kind: str) -> dict[str, Any]:
    attempts: Counter[int] = Counter()
    failures: Counter[str] = Counter()
    reasons: dict[str, Counter[str]] = {}
    judge: Counter[float] = Counter()
    confidence: Counter[float] = Counter()
    confidences: list[float] = []
    correct: list[bool] = []
    rouge, bleu, exact = [], [], []
    checked = passed = review = generated = 0
    rows = db.execute(select(Result.quality, Result.attempts, Result.checks, Result.metrics,
                             Result.label, Result.probabilities, Result.completion_tokens)
                      .where(Result.job_id == job_id).execution_options(yield_per=BATCH))
    for quality, tries, checks, metrics, label, probs, tokens in rows:
        attempts[tries] += 1
        generated += tokens or 0
        if quality is not None:
            checked += 1
            passed += quality == Quality.PASSED
            review += quality == Quality.NEEDS_REVIEW
        for v in checks or []:
            if v["passed"] is False:
                failures[v["name"]] += 1
                reasons.setdefault(v["name"], Counter())[v["reason"]] += 1
            if v["name"] == "judge" and v["score"] is not None:
                judge[round(v["score"] * 2) / 2] += 1
        top = max(probs.values()) if probs and label in probs else None
        if top is not None:
            confidence[min(int(top * 10), 9) / 10] += 1
        if metrics and kind == "classify" and top is not None:
            confidences.append(float(probs[label]))
            correct.append(bool(metrics["correct"]))
        elif metrics and "rouge_l" in metrics:
            rouge.append(metrics["rouge_l"])
            bleu.append(metrics["bleu"])
            exact.append(metrics["exact_match"])
    out: dict[str, Any] = {
        "_checked": checked, "_passed": passed, "_review": review,
        "attempts_histogram": {str(k): attempts[k] for k in sorted(attempts)},
        "failures_by_check": dict(failures.most_common()),
        "failure_reasons": {name: [[r, n] for r, n in c.most_common(5)]
                            for name, c in reasons.items()},
        "judge_scores": {str(k): judge[k] for k in sorted(judge)},
        "confidence_histogram": {f"{k:.1f}": confidence[k] for k in sorted(confidence)},
        "generated_tokens": generated,
    }
    if correct:
        out["accuracy"] = round(sum(correct) / len(correct), 4)
        out["ece"] = round(expected_calibration_error(confidences, correct), 4)
    if rouge:
        out["rouge_l"] = round(sum(rouge) / len(rouge), 4)
        out["bleu"] = round(sum(bleu) / len(bleu), 4)
        out["exact_match"] = round(sum(exact) / len(exact), 4)
    return out


def text(report: dict[str, Any]) -> str:
    """The report for a terminal."""
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    lines = [f"job {report['job_id']}  {report['kind']}  {report['state']}  "
             f"{report['items']} items",
             f"checks: {', '.join(report['checks']) or 'none'}",
             f"pass rate: first try {pct(report['first_try_pass_rate'])}  "
             f"after retries {pct(report['final_pass_rate'])}  "
             f"(needs review {report['needs_review']})",
             "attempts: " + "  ".join(f"{k}: {v}" for k, v in
                                      report["attempts_histogram"].items()),
             f"tokens: first try {report['tokens']['first_try']}  "
             f"retries {report['tokens']['retries']}"]
    for name, count in report["failures_by_check"].items():
        lines.append(f"still failing {name}: {count}")
        lines += [f"    {n} x {r}" for r, n in report["failure_reasons"].get(name, [])[:3]]
    for key in ("accuracy", "ece", "rouge_l", "bleu", "exact_match"):
        if key in report:
            lines.append(f"{key}: {report[key]}")
    if report["judge_scores"]:
        lines.append("judge scores: " + "  ".join(f"{k}: {v}" for k, v in
                                                  report["judge_scores"].items()))
    if report["confidence_histogram"]:
        lines.append("confidence: " + "  ".join(f"{k}+: {v}" for k, v in
                                                report["confidence_histogram"].items()))
    if report["reviewed"]:
        lines.append(f"reviewed by people: {report['reviewed']}  agreeing with the checks "
                     f"{pct(report['human_agreement'])}"
                     + (f"  labels right {pct(report['human_accuracy'])}"
                        if report["human_accuracy"] is not None else ""))
    return "\n".join(lines)
