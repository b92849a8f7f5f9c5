"""Jinja2 templates in the sandbox: user-written templates never reach Python internals."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


@lru_cache(maxsize=32)
def compile_template(source: str) -> Template:
    return _env.from_string(source)


def render(source: str, fields: dict[str, Any]) -> str:
    """Render a row's fields; a missing field raises ValueError naming it."""
    try:
        return compile_template(source).render(**fields)
    except UndefinedError as exc:
        raise ValueError(f"template: {exc.message}; the row has {sorted(fields)}") from None
    except Exception as exc:  # any runtime error of a user's template is that row's error
        raise ValueError(f"template: {type(exc).__name__}: {exc}") from None
