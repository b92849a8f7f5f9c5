"""A custom check as users write one: `--check custom:fn=tests.quality.custom:short_enough`."""

from quality.checks import Answer


def short_enough(answer: Answer, most: str = "50") -> tuple[bool, str, float]:
    words = len(answer.text.split())
    return words <= int(most), f"{words} words, more than {most}", float(words)


def broken(answer: Answer) -> bool:
    return 1 / 0 > 0
