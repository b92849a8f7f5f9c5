"""A module no worker may import: importing it leaves a file in the working directory.
A job spec naming it (as a check, or as a custom check's function) proves nothing from a
spec is imported: the file never appears."""

from pathlib import Path

MARK = "planted-module-was-imported"
Path(MARK).touch()


def touch(answer: object, **params: object) -> bool:
    return True
