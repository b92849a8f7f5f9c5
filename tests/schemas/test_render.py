"""Sandboxed Jinja2 rendering of user templates."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from schemas.render import (
    FIELD_COPIES,
    OUTPUT_CHARS,
    RENDER_SECONDS,
    compile_template,
    render,
)


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


# Limits: the sandbox checks a deadline at every call, filter and loop step, and a size
# budget on values and output, so a runaway template fails its own row, quickly.

def _fails_within(source: str, fields: dict[str, object], seconds: float) -> str:
    started = time.monotonic()
    with pytest.raises(ValueError) as info:
        render(source, fields)
    assert time.monotonic() - started < seconds
    return str(info.value)


def test_nested_loops_that_would_run_for_hours_stop_at_the_render_deadline() -> None:
    # No output: on a fast machine a loop writing a character a step would pass the
    # output budget first.
    source = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
              "{% endfor %}")
    assert RENDER_SECONDS == 2.0
    message = _fails_within(source, {}, RENDER_SECONDS + 1.5)
    assert message == "template: rendering took longer than 2 s"


@pytest.mark.parametrize("source", [
    # no output and no call: only the loop steps themselves
    "{% for a in text %}{% for b in text %}{% endfor %}{% endfor %}",
    # exponential recursion through macros
    "{% macro f(n) %}{% if n < 60 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}"
    "{{ f(0) }}",
    # a filter over a loop's items
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ j|abs }}{% endfor %}"
    "{% endfor %}",
], ids=["loops-over-text", "recursive-macros", "filters"])
def test_every_kind_of_runaway_stops_at_the_deadline(source: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("schemas.render.RENDER_SECONDS", 0.2)
    message = _fails_within(source, {"text": "abcdefgh " * 10_000}, 1.5)
    assert message == "template: rendering took longer than 0.2 s"


def test_output_past_the_budget_is_refused_before_it_is_joined() -> None:
    fields = {"text": "x" * 1000}
    source = ("{% for i in range(100000) %}{% for j in range(100) %}{{ text }}{% endfor %}"
              "{% endfor %}")
    limit = OUTPUT_CHARS + FIELD_COPIES * 1000
    message = _fails_within(source, fields, 1.5)
    assert message == f"template: the output passes the {limit:,}-character limit"


def test_a_long_document_quoted_whole_is_within_the_budget() -> None:
    text = "word " * (OUTPUT_CHARS // 4)
    assert render("Summarize:\n\n{{ text }}\n\nAgain: {{ text }}", {"text": text}) == \
        f"Summarize:\n\n{text}\n\nAgain: {text}"


@pytest.mark.parametrize(("source", "reason"), [
    ("{{ 'x' * 1000000000 }}", "a repetition of 1,000,000,000 items passes the"),
    ("{{ [0] * 1000000000 }}", "a repetition of 1,000,000,000 items passes the"),
    ("{{ 10 ** 100000000 }}", "10 ** 100000000 is too large to compute"),
])
def test_huge_repetitions_and_powers_are_refused_before_they_run(source: str,
                                                                 reason: str) -> None:
    assert _fails_within(source, {}, 0.5).startswith(f"template: {reason}")


@pytest.mark.parametrize("source", [
    "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s|length }}",
    "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}{{ ns.s|length }}",
    "{{ 'x'|center(100000000)|length }}",
    "{{ 'x'.ljust(100000000)|length }}",
], ids=["concat", "plus", "filter", "method"])
def test_a_value_past_the_budget_is_refused(source: str) -> None:
    message = _fails_within(source, {}, 1.5)
    assert "characters passes the" in message and message.startswith("template: a value of")


def test_templates_within_the_limits_render_as_before() -> None:
    fields = {"words": ["b", "a"], "d": {"y": 2, "x": 1},
              "tree": [{"n": 1, "c": [{"n": 2, "c": []}]}], "size": 31_457_280}
    source = ("{% for w in words|sort %}{{ loop.index }}{{ w|upper }}{% if loop.last %}!"
              "{% endif %}{% else %}none{% endfor %} "
              "{% for k, v in d|dictsort %}{{ k }}={{ v }};{% endfor %} "
              "{% for t in tree recursive %}{{ t.n }}{% if t.c %}({{ loop(t.c) }}){% endif %}"
              "{% endfor %} "
              "{% macro box() %}[{{ caller() }}]{% endmacro %}{% call box() %}in{% endcall %} "
              "{{ words|map('upper')|join(',') }} {{ 2 ** 64 }} {{ 'ab' * 2 }} {{ [1] + [2] }} "
              "{{ size|filesizeformat }} {{ range(3)|list }} {{ 'a' ~ 1 }}")
    assert render(source, fields) == ("1A2B! x=1;y=2; 1(2) [in] B,A 18446744073709551616 "
                                      "abab [1, 2] 31.5 MB [0, 1, 2] a1")


def test_one_runaway_render_does_not_spend_another_threads_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("schemas.render.RENDER_SECONDS", 0.5)
    runaway = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with ThreadPoolExecutor(2) as pool:
        stuck = pool.submit(_fails_within, runaway, {}, 2.0)
        time.sleep(0.4)  # the runaway has spent most of its time
        quick = pool.submit(render, "{% for i in range(3) %}{{ i }}{% endfor %}", {})
        assert quick.result() == "012"
        assert stuck.result() == "template: rendering took longer than 0.5 s"
