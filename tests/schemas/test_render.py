"""Sandboxed Jinja2 rendering of user templates."""

from __future__ import annotations

import pytest

from schemas.render import compile_template, render


def test_template_renders_the_row_fields() -> None:
    assert render("Q: {{ q }} ({{ n }})", {"q": "why?", "n": 3}) == "Q: why? (3)"


def test_missing_field_raises_value_error_naming_it_and_the_row_fields() -> None:
    with pytest.raises(ValueError, match="'title' is undefined") as info:
        render("{{ title }}: {{ body }}", {"body": "x", "author": "y"})
    assert "['author', 'body']" in str(info.value)


def test_compiled_templates_are_cached() -> None:
    assert compile_template("{{ a }}") is compile_template("{{ a }}")


def test_sandbox_refuses_dunder_access_to_python_internals() -> None:
    with pytest.raises(ValueError, match="SecurityError.*unsafe"):
        render("{{ ''.__class__.__mro__ }}", {})


def test_sandbox_refuses_function_globals() -> None:
    with pytest.raises(ValueError, match="SecurityError.*unsafe"):
        render("{{ f.__globals__ }}", {"f": render})


def test_sandbox_is_immutable_so_templates_cannot_mutate_row_values() -> None:
    items = [1, 2]
    with pytest.raises(ValueError, match="SecurityError.*unsafe"):
        render("{{ items.append(3) }}", {"items": items})
    assert items == [1, 2]
