"""Label probabilities from the first decoding step of a constrained classification.

vLLM returns raw log-probabilities (before the label-set constraint masks the
vocabulary), so the model's own belief over the labels is visible. A label can
start with several tokens ("pos", "positive"); each top token's mass goes to the
labels its text begins, split evenly where it begins several. The result is
normalized over the label set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any


def label_probabilities(
    first_step: Mapping[int, Any], labels: list[str], decode: Callable[[int], str], *,
    chosen: str | None = None,
) -> dict[str, float]:
    mass = dict.fromkeys(labels, 0.0)
    for token_id, logprob in first_step.items():
        piece = decode(token_id).lstrip()
        if not piece:
            continue
        matches = [label for label in labels if label.startswith(piece)]
        for label in matches:
            mass[label] += math.exp(logprob.logprob) / len(matches)
    total = sum(mass.values())
    if total <= 0.0:  # no top token began any label: all belief on the constrained choice
        return {label: float(label == chosen) for label in labels}
    return {label: round(value / total, 6) for label, value in mass.items()}
