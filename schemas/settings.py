"""One settings object, read once: CLI options > environment > `nightshift.toml` > defaults."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEMO_MODEL = "smollm2-135m-instruct"


class Settings(BaseSettings):
    """Where the broker, the database and the model are.

    Every field is also a `NIGHTSHIFT_*` environment variable and a key of
    `nightshift.toml` (or the file `NIGHTSHIFT_CONFIG` names).
    """

    model_config = SettingsConfigDict(env_prefix="NIGHTSHIFT_", extra="ignore")

    broker_url: str = "redis://localhost:6379/0"
    database_url: str = "sqlite:///nightshift.db"
    model: str = DEMO_MODEL
    # Where materialized models (the demo model) are cached between runs.
    model_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "nightshift")
    # A worker that stops heartbeating loses its chunk after this long.
    lease_seconds: float = 30.0
    # An engine holding requests that finishes no step for this long is stuck: its worker
    # hands its chunks back and exits for its supervisor. Far above any honest step.
    stall_seconds: float = Field(300.0, gt=0)
    # Chunk messages each job keeps on the broker: the next one is sent as one finishes, so
    # jobs of one model and priority take turns instead of waiting behind a big one whole.
    window: int = Field(64, ge=1)
    # Modules whose `CHECKS` dict registers the operator's own checks, beside the
    # `nightshift.checks` entry points of installed packages (quality.registry). In the
    # environment: comma-separated module names.
    check_modules: Annotated[list[str], NoDecode] = []
    # `nightshift serve`: where uploaded files are kept (default: `nightshift-files` beside
    # a SQLite database, else under the user's data directory), and the largest upload.
    files_dir: Path | None = None
    max_file_bytes: int = Field(200_000_000, gt=0)

    @field_validator("check_modules", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(
            settings_cls, toml_file=os.environ.get("NIGHTSHIFT_CONFIG", "nightshift.toml")
        )
        return (init_settings, env_settings, toml)


def load(**overrides: Any) -> Settings:
    """Settings with CLI values (None means "not given") laid over env and file."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


# The user and password: a password runs to the last `@` before the query, so one holding
# `@` or `/` is masked whole; a user may hold `@` (`user@server`), never `/`.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:/?#]*:)[^?]*@")
# Query parameters that carry a secret (`?password=`, `&sslpassword=`, `?token=`...).
_SECRET_PARAM = re.compile(
    r"([?&][^=&#]*(?:pass|pwd|secret|token|credential|api[_-]?key)[^=&#]*=)[^&]+", re.I)


def redact(url: str) -> str:
    """A URL fit for logs and status output: every password replaced by ***."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", url))
