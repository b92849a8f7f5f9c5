"""One settings object, read once: CLI options > environment > `nightshift.toml` > defaults.

A plain dataclass, checked here: every command starts by reading its settings, and
building them as a pydantic model took a third of a `nightshift status` (100 of 300 ms).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError

DEMO_MODEL = "smollm2-135m-instruct"
ENV_PREFIX = "NIGHTSHIFT_"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Where the broker, the database and the model are.

    Every field is also a `NIGHTSHIFT_*` environment variable and a key of
    `nightshift.toml` (or the file `NIGHTSHIFT_CONFIG` names). A field's `above` or
    `least` metadata is the bound it is checked against.
    """

    broker_url: str = "redis://localhost:6379/0"
    database_url: str = "sqlite:///nightshift.db"
    model: str = DEMO_MODEL
    # Where materialized models (the demo model) are cached between runs.
    model_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "nightshift")
    # A worker that stops heartbeating loses its chunk after this long.
    lease_seconds: float = 30.0
    # An engine holding requests that finishes no step for this long is stuck: its worker
    # hands its chunks back and exits for its supervisor. Far above any honest step.
    stall_seconds: float = field(default=300.0, metadata={"above": 0})
    # Chunk messages each job keeps on the broker: the next one is sent as one finishes, so
    # jobs of one model and priority take turns instead of waiting behind a big one whole.
    window: int = field(default=64, metadata={"least": 1})
    # Modules whose `CHECKS` dict registers the operator's own checks, beside the
    # `nightshift.checks` entry points of installed packages (quality.registry). In the
    # environment: comma-separated module names.
    check_modules: list[str] = field(default_factory=list)
    # `nightshift serve`: where uploaded files are kept (default: `nightshift-files` beside
    # a SQLite database, else under the user's data directory), and the largest upload.
    files_dir: Path | None = None
    max_file_bytes: int = field(default=200_000_000, metadata={"above": 0})


def load(**overrides: Any) -> Settings:
    """Settings with CLI values (None means "not given") laid over the environment, laid
    over the file. Raises ConfigError naming the setting at fault and where it was set."""
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(overrides.keys() - known.keys())
    if unknown:
        raise TypeError(f"load() has no setting {', '.join(unknown)}")
    config = Path(os.environ.get("NIGHTSHIFT_CONFIG") or "nightshift.toml")
    given = {name.lower(): (value, f"{config}: {name}")
             for name, value in _from_file(config).items() if name.lower() in known}
    # Names in any case, as on Windows; where two differ only in case, the upper-case wins.
    env = {name.upper(): value for name, value in sorted(os.environ.items(),
                                                         key=lambda kv: kv[0].isupper())}
    given.update({name: (env[ENV_PREFIX + name.upper()], ENV_PREFIX + name.upper())
                  for name in known if ENV_PREFIX + name.upper() in env})
    given.update({name: (value, name) for name, value in overrides.items() if value is not None})
    return Settings(**{name: _checked(known[name], value, where)
                       for name, (value, where) in given.items()})


def _checked(setting: Field[Any], value: Any, where: str) -> Any:
    parse, expected = _KINDS[str(setting.type)]
    try:
        parsed = parse(value)
    except (TypeError, ValueError):
        raise ConfigError(f"settings: {where}: must be {expected}, not {value!r}") from None
    if "above" in setting.metadata and not parsed > setting.metadata["above"]:
        raise ConfigError(f"settings: {where}: must be above {setting.metadata['above']}, "
                          f"not {value!r}")
    if "least" in setting.metadata and not parsed >= setting.metadata["least"]:
        raise ConfigError(f"settings: {where}: must be at least {setting.metadata['least']}, "
                          f"not {value!r}")
    return parsed


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _number(kind: type) -> Callable[[Any], Any]:
    """`kind` from a number or its text; a whole number may be written 64.0 or 2e8."""
    def parse(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(value)
        number = value
        if isinstance(value, str):
            try:
                number = int(value)
            except ValueError:
                number = float(value)
        if kind is int and not float(number).is_integer():
            raise ValueError(value)
        return kind(number)
    return parse


def _path(value: Any) -> Path:
    return Path(_text(value) if not isinstance(value, Path) else value)


def _names(value: Any) -> list[str]:
    """Comma-separated text (the environment) or a list of names (the file, the CLI)."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if not isinstance(value, (list, tuple)):
        raise TypeError(value)
    return [_text(name) for name in value]


# How a field's annotation is read from text, TOML or a CLI value, and what it must be.
_KINDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "str": (_text, "text"), "float": (_number(float), "a number"),
    "int": (_number(int), "a whole number"), "Path": (_path, "a path"),
    "Path | None": (_path, "a path"), "list[str]": (_names, "a list of module names")}


def _from_file(path: Path) -> dict[str, Any]:
    """No file there is no settings; a file that cannot be read, or is not TOML, says so."""
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"settings: {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings: {path} is not valid TOML: {exc}") from None


# The user and password: a password runs to the last `@` before the query, so one holding
# `@` or `/` is masked whole; a user may hold `@` (`user@server`), never `/`.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:/?#]*:)[^?]*@")
# Query parameters that carry a secret (`?password=`, `&sslpassword=`, `?token=`...).
_SECRET_PARAM = re.compile(
    r"([?&][^=&#]*(?:pass|pwd|secret|token|credential|api[_-]?key)[^=&#]*=)[^&]+", re.I)


def redact(url: str) -> str:
    """A URL fit for logs and status output: every password replaced by ***."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", url))
