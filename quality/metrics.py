"""Reference metrics: how an answer compares with the row's `reference`, when it has one.

They are measured and reported, not judged: a summary can be good and share few words
with the reference. Classification's accuracy and calibration (ECE) come from them.
"""

from __future__ import annotations

from typing import Any


def normalize(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .!?\"'")


def reference_metrics(kind: str, output: str | None, label: str | None,
                      reference: str | None) -> dict[str, Any] | None:
    if reference is None:
        return None
    if kind == "classify":
        return {"correct": label is not None and normalize(label) == normalize(reference)}
    text = output or ""
    return {"exact_match": normalize(text) == normalize(reference),
            "rouge_l": round(rouge_l(text, reference), 4), "bleu": round(bleu(text, reference), 4)}


def rouge_l(output: str, reference: str) -> float:
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"]).score(reference, output)["rougeL"].fmeasure)


def bleu(output: str, reference: str) -> float:
    """Sentence BLEU on a 0-1 scale, with sacrebleu's smoothing for short texts."""
    from sacrebleu.metrics import BLEU

    return float(BLEU(effective_order=True).sentence_score(output, [reference]).score) / 100


def expected_calibration_error(confidences: list[float], correct: list[bool], *,
                               bins: int = 10) -> float:
    """|accuracy - confidence| per confidence bin, weighted by the bin's share of items."""
    total = len(confidences)
    if total == 0:
        return 0.0
    error = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidences)
                   if lo < c <= hi or (b == 0 and c == 0.0)]
        if members:
            accuracy = sum(correct[i] for i in members) / len(members)
            mean_conf = sum(confidences[i] for i in members) / len(members)
            error += len(members) / total * abs(accuracy - mean_conf)
    return error
