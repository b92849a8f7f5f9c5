"""`make bench-classify`: labels on a labelled sentiment set, with the confidence bar.

Short product reviews, half positive and half negative (built from the templates below,
each row carrying its gold label as `reference`), classified by the demo model with
`--check confidence:min=0.8` and 2 attempts: an unconfident label is asked again by
self-consistency (k sampled labels, majority) and kept as `needs_review` if still
unsure. Prints `nightshift report`'s accuracy and expected calibration error (ECE),
then the same file with `--max-attempts 1` (the greedy label alone) beside it, and
checks that no label is outside the label set. Figures go to
bench/results/classify.json; the databases stay in bench/results/classify/.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from sqlalchemy import select

from bench.run import RESULTS, engine_kwargs, run_nightshift
from quality import report
from schemas import db
from schemas.tables import Result

PRODUCTS = ["blender", "phone case", "desk lamp", "backpack", "kettle", "headphones",
            "sofa", "printer", "umbrella", "coffee grinder", "keyboard", "tent",
            "vacuum cleaner"]
POSITIVE = ["I love this {p}, it works perfectly.", "Great {p}, I would buy it again.",
            "The {p} exceeded my expectations.", "Best {p} I have ever owned.",
            "Very happy with the {p}, solid and well made.",
            "The {p} arrived early and does exactly what it promised.",
            "Honestly a delightful {p}. Five stars.",
            "It took a day to get used to, but now the {p} is fantastic."]
NEGATIVE = ["The {p} broke after two days.", "Terrible {p}, a waste of money.",
            "I regret buying this {p}.", "The {p} stopped working within a week.",
            "Cheap, flimsy {p}. Returned it.", "The {p} looks nice but fails constantly.",
            "Do not buy this {p}, the worst purchase this year.",
            "Customer service ignored me when the {p} arrived damaged."]
LABELS = ("positive", "negative")


def make_reviews(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            label = LABELS[i % 2]
            templates = POSITIVE if label == "positive" else NEGATIVE
            text = templates[(i // 2) % len(templates)].format(
                p=PRODUCTS[(i // 2) % len(PRODUCTS)])
            fh.write(json.dumps({"id": f"review-{i}", "prompt": text, "reference": label})
                     + "\n")
    return path


def labels_outside(db_url: str, job_id: str) -> int:
    with db.session(db_url) as session:
        labels = session.scalars(select(Result.label).where(Result.job_id == job_id))
        return sum(label not in LABELS for label in labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="reviews")
    # 0.8: with 5 votes on two labels a majority is at least 0.6, so 0.6 would pass all.
    parser.add_argument("--min-confidence", type=float, default=0.8)
    parser.add_argument("--samples", type=int, default=5, help="self-consistency votes")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    work = RESULTS / "classify"
    shutil.rmtree(work, ignore_errors=True)
    path = make_reviews(work / "reviews.jsonl", args.n)
    job_flags = ["--kind", "classify", *(f for label in LABELS for f in ("--label", label)),
                 "--check", f"confidence:min={args.min_confidence},samples={args.samples}"]
    shown = {}
    for name, attempts in (("with_retries", "2"), ("max_attempts_1", "1")):
        (work / name).mkdir()
        night = run_nightshift(path, engine_kwargs(args), work / name, args.broker_url,
                               (*job_flags, "--max-attempts", attempts))
        built = report.build(night["db_url"], night["job_id"])
        built["labels_outside_the_set"] = labels_outside(night["db_url"], night["job_id"])
        shown[name] = built
        print(f"--max-attempts {attempts}:")
        print(report.text(built))
        print(f"labels outside the label set: {built['labels_outside_the_set']}\n")
    (RESULTS / "classify.json").write_text(json.dumps(shown, indent=2) + "\n")
    print(json.dumps({name: {k: r.get(k) for k in ("accuracy", "ece", "needs_review",
                                                   "labels_outside_the_set")}
                      for name, r in shown.items()}))


if __name__ == "__main__":
    main()
