"""Checks as an operator registers them for quick use: `NIGHTSHIFT_CHECK_MODULES=
tests.quality.custom` makes `--check short_enough:most=50` a check like a built-in one."""

import time

from quality.checks import Answer, Verdict


def short_enough(answer: Answer, most: str = "50") -> tuple[bool, str, float]:
    words = len(answer.text.split())
    return words <= int(most), f"{words} words, more than {most}", float(words)


def mentions(answer: Answer, word: str) -> Verdict:
    found = word.casefold() in answer.text.casefold()
    return Verdict("mentions", found, reason="" if found else f"never says {word!r}")


def broken(answer: Answer) -> bool:
    return 1 / 0 > 0


def forever(answer: Answer) -> bool:
    while True:
        time.sleep(0.1)


CHECKS = {"short_enough": short_enough, "mentions": mentions, "broken": broken,
          "forever": forever}
