"""Checks the operator registers: found among installed packages and named modules, never
imported from a name a job spec holds, and run in a child process killed past a time limit.

An operator registers a check in one of two ways; its name is what `--check NAME:k=v`
uses, like a built-in check's:

- an entry point of group `nightshift.checks` in an installed package, named for the
  check, its value `module:function`:

      [project.entry-points."nightshift.checks"]
      short_enough = "acme_checks:short_enough"

- for quick use, a module named in the setting `check_modules` (NIGHTSHIFT_CHECK_MODULES,
  comma-separated module names) that defines a module-level dict `CHECKS`:

      CHECKS = {"short_enough": short_enough}

A check is `function(answer: Answer, **params)` returning a `Verdict`, a bool, or
`(passed, reason)` / `(passed, reason, score)`. Its parameters are the values the spec
gives (strings, as written on the command line); `submit` binds them to the function's
signature, so a misspelt parameter is refused there.

Each call runs in a child process of the calling process (spawned on first use, then
reused): a call that runs past `CALL_SECONDS` has its child killed, and the item's
verdict fails with that reason. A thread would not do: Python cannot stop a thread, and
a check stuck in a loop would hold a core and its memory as long as the worker lives.
"""

from __future__ import annotations

import importlib
import inspect
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

from schemas.errors import ConfigError

GROUP = "nightshift.checks"
SETTING = "NIGHTSHIFT_CHECK_MODULES"
WHERE = f"entry point group {GROUP!r} or a module in {SETTING}"
# One call of a registered check, on one answer: far longer than an honest check takes
# (they look at one answer's text), short enough that a stuck one costs an item little.
CALL_SECONDS = 10.0
# A child's start: a fresh interpreter importing the operator's modules.
START_SECONDS = 120.0


class RegistryError(ConfigError, ValueError):
    """The operator's registrations cannot be loaded. A ValueError too, so a job spec
    naming a registered check is refused with this reason wherever it is validated."""


class CheckFailed(Exception):
    """A registered check gave no verdict: it raised, or its process died. The message is
    the item's reason."""


class CheckTimeout(CheckFailed):
    """A registered check ran past its time limit; its child process was killed."""


@dataclass(frozen=True)
class Registered:
    name: str
    fn: Callable[..., Any]
    # Where the operator registered it: "entry point acme_checks:short_enough" or
    # "module acme_checks".
    origin: str

    def bind(self, params: dict[str, Any]) -> None:
        """A ValueError naming the parameter the function does not take (or lacks)."""
        try:
            inspect.signature(self.fn).bind(None, **params)
        except TypeError as exc:
            raise ValueError(f"check {self.name}: {exc}") from None


def discover(modules: tuple[str, ...]) -> dict[str, Registered]:
    """Every check the entry points and `modules` register, importing only those."""
    found: dict[str, Registered] = {}
    for ep in entry_points(group=GROUP):
        try:
            fn = ep.load()
        except Exception as exc:
            raise RegistryError(f"check {ep.name} (entry point {ep.value} of group {GROUP}) "
                                f"cannot be loaded: {exc!r}") from None
        _add(found, Registered(ep.name, fn, f"entry point {ep.value}"))
    for module in modules:
        try:
            table = importlib.import_module(module).CHECKS
        except Exception as exc:
            raise RegistryError(f"{SETTING}: the CHECKS of module {module} cannot be "
                                f"loaded: {exc!r}") from None
        for name, fn in dict(table).items():
            _add(found, Registered(str(name), fn, f"module {module}"))
    return found


def _add(found: dict[str, Registered], check: Registered) -> None:
    if not callable(check.fn):
        raise RegistryError(f"check {check.name} ({check.origin}) is not a function")
    if check.name in found:
        raise RegistryError(f"check {check.name} is registered twice: by "
                            f"{found[check.name].origin} and by {check.origin}")
    found[check.name] = check


def configured_modules() -> tuple[str, ...]:
    from schemas.settings import load

    return tuple(load().check_modules)


_lock = threading.Lock()
_loaded: tuple[tuple[str, ...], dict[str, Registered] | RegistryError] | None = None


def installed() -> dict[str, Registered]:
    """The checks registered where this process runs, loaded once (a failure too)."""
    global _loaded
    with _lock:
        if _loaded is None:
            modules = configured_modules()
            try:
                _loaded = modules, discover(modules)
            except RegistryError as exc:
                _loaded = modules, exc
        found = _loaded[1]
    if isinstance(found, RegistryError):
        raise found
    return found


def forget() -> None:
    """Load the registrations again on next use (after the settings or packages changed),
    in new child processes."""
    global _loaded
    with _lock:
        _loaded = None
        idle, _idle[:] = list(_idle), []
    for child in idle:
        child.kill()


def call(name: str, answer: Any, params: dict[str, Any], *,
         limit: float | None = None) -> Any:
    """What check `name` returns for `answer`, computed in a child process; CheckTimeout
    past `limit` seconds (CALL_SECONDS), CheckFailed saying what the check raised."""
    limit = CALL_SECONDS if limit is None else limit
    child = _take()
    try:
        status, value = child.ask((name, answer, params), limit, f"check {name}")
    except BaseException:
        child.kill()
        raise
    _give(child)
    if status != "ok":
        raise CheckFailed(value)
    return value


_idle: list[_Child] = []


def _take() -> _Child:
    with _lock:
        modules = _loaded[0] if _loaded is not None else configured_modules()
        while _idle:
            child = _idle.pop()
            if child.modules == modules and child.alive():
                return child
            child.kill()
    return _Child(modules)


def _give(child: _Child) -> None:
    with _lock:
        _idle.append(child)


class _Child:
    """One child process serving calls of registered checks, one at a time."""

    def __init__(self, modules: tuple[str, ...]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.modules = modules
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(theirs, modules, os.getpid()),
                                name="nightshift-checks", daemon=True)
        self.proc.start()
        theirs.close()
        try:
            status, value = self._answer(START_SECONDS, "starting the checks' process")
        except BaseException:
            self.kill()
            raise
        if status != "ready":
            self.kill()
            raise RegistryError(value)

    def ask(self, request: tuple[str, Any, dict[str, Any]], limit: float,
            what: str) -> tuple[str, Any]:
        self.conn.send(request)
        return self._answer(limit, what)

    def _answer(self, limit: float, what: str) -> tuple[str, Any]:
        if not self.conn.poll(limit):
            raise CheckTimeout(f"{what} ran past its limit of {limit:g} s and was stopped")
        try:
            got: tuple[str, Any] = self.conn.recv()
        except EOFError:
            raise CheckFailed(f"{what}: the checks' process died (exit "
                               f"{self.proc.exitcode})") from None
        return got

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def _serve(conn: Connection, modules: tuple[str, ...], parent: int) -> None:
    """The child's loop: load the registrations, then answer calls until the parent goes."""
    threading.Thread(target=_orphaned, args=(parent,), daemon=True).start()
    try:
        found = discover(modules)
    except RegistryError as exc:
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", None))
    while True:
        try:
            name, answer, params = conn.recv()
        except EOFError:
            return
        conn.send(_one(found, name, answer, params))


def _one(found: dict[str, Registered], name: str, answer: Any, params: dict[str, Any]
         ) -> tuple[str, Any]:
    check = found.get(name)
    if check is None:
        return "error", f"check {name!r} is not registered on this worker"
    try:
        got = check.fn(answer, **params)
    except Exception as exc:
        return "error", f"the check raised {exc!r}"
    try:
        # Pickled here, so a result that cannot cross is this call's error, not the loop's.
        ForkingPickler.dumps(got)
    except Exception as exc:
        return "error", f"the check returned {type(got).__name__}, which cannot be sent: {exc}"
    return "ok", got


def _orphaned(parent: int) -> None:
    """Exit when the parent is gone, even in the middle of a check that never returns."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)
