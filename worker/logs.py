"""The worker's logs: readable lines for people, or one JSON object a line for machines.

`--log-format json` turns every record of the worker process into a JSON object
(`ts`, `level`, `logger`, `message`, and `exc_info` when there is one), vLLM's own
records included: vLLM configures its loggers at import from the file that
`VLLM_LOGGING_CONFIG_PATH` names, read again by its engine-core child process, so this
must run before vLLM is imported. What is written to stderr without logging stays as it
is: tqdm progress bars, native (C++) warnings, and what vLLM's child processes print
while importing, before their logging is set up.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import UTC, datetime

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        shown = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
                 "level": record.levelname, "logger": record.name,
                 "message": record.getMessage(), "process": record.process,
                 "thread": record.threadName}
        if record.exc_info:
            shown["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(shown, ensure_ascii=False, default=str)


def configure(fmt: str, level: str) -> None:
    """Root handler on stderr in `fmt`; with json, vLLM's loggers too."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn (Celery's, torch's) as records too
    if fmt == "json":
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = _vllm_config(level)


def _vllm_config(level: str) -> str:
    config = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json",
                              "stream": "ext://sys.stderr"}},
        "loggers": {"vllm": {"handlers": ["json"], "level": level, "propagate": False}},
    }
    fd, path = tempfile.mkstemp(prefix="nightshift-vllm-logging-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh)
    return path
