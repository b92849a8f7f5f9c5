"""Label probabilities from the first step's raw log-probabilities."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from worker.labels import label_probabilities


@dataclass
class Logprob:
    logprob: float


def step(pieces: dict[str, float]) -> tuple[dict[int, Logprob], dict[int, str]]:
    """A first step over the given token texts with the given probabilities."""
    first = {i: Logprob(math.log(p) if p > 0 else -math.inf) for i, p in enumerate(pieces.values())}
    return first, dict(enumerate(pieces))


def probs(pieces: dict[str, float], labels: list[str], chosen: str | None = None
          ) -> dict[str, float]:
    first, vocab = step(pieces)
    return label_probabilities(first, labels, vocab.__getitem__, chosen=chosen)


def test_probabilities_are_normalized_over_the_labels() -> None:
    result = probs({"positive": 0.3, "negative": 0.1, "maybe": 0.5}, ["positive", "negative"])
    assert result == {"positive": pytest.approx(0.75), "negative": pytest.approx(0.25)}
    assert sum(result.values()) == pytest.approx(1.0)


def test_a_prefix_token_counts_for_the_label_it_begins() -> None:
    result = probs({" pos": 0.2, "neg": 0.2, "negative": 0.4}, ["positive", "negative"])
    assert result == {"positive": pytest.approx(0.25), "negative": pytest.approx(0.75)}


def test_a_token_beginning_two_labels_is_split_evenly() -> None:
    result = probs({"ne": 0.4, "positive": 0.4}, ["neutral", "negative", "positive"])
    assert result == {
        "neutral": pytest.approx(0.25),
        "negative": pytest.approx(0.25),
        "positive": pytest.approx(0.5),
    }


def test_minus_infinity_logprobs_add_nothing() -> None:
    result = probs({"negative": 0.0, "positive": 0.5}, ["positive", "negative"])
    assert result == {"positive": 1.0, "negative": 0.0}


def test_whitespace_only_tokens_are_ignored() -> None:
    result = probs({" ": 0.9, "yes": 0.05, "no": 0.05}, ["yes", "no"])
    assert result == {"yes": pytest.approx(0.5), "no": pytest.approx(0.5)}


def test_no_matching_token_puts_all_belief_on_the_chosen_label() -> None:
    result = probs({"hello": 0.7, " ": 0.2}, ["positive", "negative"], chosen="negative")
    assert result == {"positive": 0.0, "negative": 1.0}


def test_only_minus_infinity_matches_falls_back_to_the_chosen_label() -> None:
    result = probs({"positive": 0.0}, ["positive", "negative"], chosen="positive")
    assert result == {"positive": 1.0, "negative": 0.0}
