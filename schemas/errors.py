"""Errors for people who run nightshift: each message says what to fix."""


class NightshiftError(Exception):
    """Base of every error the CLI reports as one line and a non-zero exit."""

    exit_code = 1


class ConfigError(NightshiftError):
    exit_code = 2


class InputError(NightshiftError):
    """The input file (or a row of it) cannot become a job."""

    exit_code = 2


class UnreadableDocument(InputError):
    """One document gives no text (encrypted, empty, scanned, damaged): it is skipped."""


class DatabaseUnreachable(NightshiftError):
    exit_code = 3


class BrokerUnreachable(NightshiftError):
    exit_code = 3


class JobNotFound(NightshiftError):
    exit_code = 4


class AmbiguousJob(NightshiftError):
    """A JOB argument that names no one job: shorter than a prefix may be, or the start of
    several jobs' ids."""

    exit_code = 2


class ModelError(NightshiftError):
    """The model cannot be found or loaded."""

    exit_code = 2
