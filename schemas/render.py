"""Jinja2 templates in the sandbox: user-written templates never reach Python internals,
and none renders for ever or grows without bound.

The limits are enforced by the sandbox itself, in the rendering thread (no subprocess):
every call (functions, methods, macros, `loop(...)`, `caller()`), every filter, every
step of every `{% for %}` and every `~` checks the render's deadline, and a string past
the size budget is refused. A template that trips one fails its own row with the reason,
like any other template error. A single operation's result is measured once it is made,
except repetition (`*`) and powers (`**`), which are refused before they run.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, UndefinedError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

# A prompt renders in microseconds; a template still going after this is a runaway loop.
RENDER_SECONDS = 2.0
# Characters a template may produce beyond its fields' own text (times FIELD_COPIES):
# far past any model's context, short of what would strain a worker's memory.
OUTPUT_CHARS = 16 * 1024 * 1024
FIELD_COPIES = 4
# Bits a `**` result may have: 10**1000 is fine, 10**10**9 would run for hours.
POWER_BITS = 100_000


class RenderLimit(Exception):
    """A template ran past its deadline or its size budget."""


@dataclass
class _Budget:
    deadline: float
    chars: int
    written: int = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimit(f"rendering took longer than {RENDER_SECONDS:g} s")

    def measured(self, value: Any) -> Any:
        if isinstance(value, str) and len(value) > self.chars:
            raise RenderLimit(f"a value of {len(value):,} characters passes the "
                              f"{self.chars:,}-character limit")
        return value

    def output(self, pieces: Iterable[str]) -> str:
        """The template's output, measured as it comes (loops and calls keep the time)."""
        parts: list[str] = []
        keep, written, chars = parts.append, self.written, self.chars
        for piece in pieces:
            written += len(piece)
            if written > chars:
                raise RenderLimit(f"the output passes the {chars:,}-character limit")
            keep(piece)
        self.written = written
        return "".join(parts)


# The budget of the render under way in this thread; None outside render() (no limits).
_budget: ContextVar[_Budget | None] = ContextVar("render_budget", default=None)


def _measured(value: Any) -> Any:
    budget = _budget.get()
    return value if budget is None else budget.measured(value)


def _limited(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose every use checks the deadline and measures its result; wraps keeps
    the `pass_context`-style marks Jinja2 reads from the function."""
    @functools.wraps(fn)
    def limited(*args: Any, **kwargs: Any) -> Any:
        budget = _budget.get()
        if budget is None:
            return fn(*args, **kwargs)
        budget.tick()
        return budget.measured(fn(*args, **kwargs))

    return limited


class _LimitedCode(CodeGenerator):
    """Compiles `{% for x in xs %}` as a loop over `environment.steps(xs)` and every `~`
    through `environment.measured`: loops and concatenation are where time and size go
    without any call."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        steps = nodes.Call(nodes.EnvironmentAttribute("steps"), [node.iter], [], None, None)
        node.iter = steps.set_lineno(node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.measured(")
        super().visit_Concat(node, frame)
        self.write(")")


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with a deadline and a size budget per render."""

    code_generator_class = _LimitedCode
    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self, **options: Any) -> None:
        # Not optimized: the optimizer runs constant filters at compile time, outside the budget.
        super().__init__(optimized=False, **options)
        self.filters = {name: _limited(fn) for name, fn in self.filters.items()}

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget.get()
        if budget is None:
            return super().call(context, obj, *args, **kwargs)
        budget.tick()
        return budget.measured(super().call(context, obj, *args, **kwargs))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget.get()
        if budget is not None:
            _refuse_huge(operator, left, right, budget.chars)
        return _measured(super().call_binop(context, operator, left, right))

    def steps(self, iterable: Iterable[Any]) -> Iterable[Any]:
        """A `{% for %}`'s items, the deadline checked at each one."""
        budget = _budget.get()
        return iterable if budget is None else _stepped(iter(iterable), budget)

    def measured(self, value: Any) -> Any:
        return _measured(value)


def _stepped(items: Iterator[Any], budget: _Budget) -> Iterator[Any]:
    deadline, now = budget.deadline, time.monotonic
    for item in items:
        if now() > deadline:
            budget.tick()
        yield item


def _refuse_huge(op: str, left: Any, right: Any, chars: int) -> None:
    """`"x" * 1000000000` and `2 ** 100000000` are refused before Python starts on them."""
    if op == "*":
        sized, times = (left, right) if isinstance(right, int) else (right, left)
        if (isinstance(times, int) and isinstance(sized, str | list | tuple)
                and len(sized) * times > chars):
            raise RenderLimit(f"a repetition of {len(sized) * times:,} items passes the "
                              f"{chars:,} limit")
    elif (op == "**" and isinstance(left, int) and isinstance(right, int) and right > 0
          and abs(left) > 1 and abs(left).bit_length() * right > POWER_BITS):
        raise RenderLimit(f"{left} ** {right} is too large to compute")


_env = LimitedEnvironment(undefined=StrictUndefined, autoescape=False)


@lru_cache(maxsize=32)
def compile_template(source: str) -> Template:
    return _env.from_string(source)


def render(source: str, fields: dict[str, Any]) -> str:
    """Render a row's fields; a missing field, a runtime error or a limit passed raises
    ValueError naming it."""
    size = sum(len(v) for v in fields.values() if isinstance(v, str))
    budget = _Budget(time.monotonic() + RENDER_SECONDS, OUTPUT_CHARS + FIELD_COPIES * size)
    token = _budget.set(budget)
    try:
        template = compile_template(source)
        return budget.output(template.root_render_func(template.new_context(fields)))
    except RenderLimit as exc:
        raise ValueError(f"template: {exc}") from None
    except UndefinedError as exc:
        raise ValueError(f"template: {exc.message}; the row has {sorted(fields)}") from None
    except Exception as exc:  # any runtime error of a user's template is that row's error
        raise ValueError(f"template: {type(exc).__name__}: {exc}") from None
    finally:
        _budget.reset(token)
