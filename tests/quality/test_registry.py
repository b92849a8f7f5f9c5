"""Checks the operator registers: found through real entry points and named modules,
never imported from a name a spec holds, and stopped past their time limit."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CHECK_MODULES, NIGHTSHIFT, ROOT

from quality import checks, registry
from quality.checks import Answer
from schemas.spec import JobSpec


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path where packages are "installed" (a module and its
    dist-info, as pip leaves them); the registry is loaded again around the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("NIGHTSHIFT_CHECK_MODULES", raising=False)
    registry.forget()
    yield tmp_path
    registry.forget()


def at_submit(spec: dict[str, Any]) -> JobSpec:
    return checks.validate_spec(JobSpec.model_validate(spec, context={"at_submit": True}),
                                at_submit=True)


def as_loaded(spec: dict[str, Any]) -> JobSpec:
    """The spec as a worker loads it from SQL."""
    return checks.validate_spec(JobSpec.model_validate(spec))


def install(site: Path, module: str, source: str, entry_points: str) -> None:
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{registry.GROUP}]\n{entry_points}\n")


POLITE = '''
def polite(answer, word="please"):
    return word in answer.text, f"never says {word!r}"
'''


def test_a_check_an_installed_package_registers_as_an_entry_point_is_found_and_run(
        site: Path) -> None:
    module = f"acme_{uuid.uuid4().hex[:8]}"
    install(site, module, POLITE, f"polite = {module}:polite")
    assert checks.lookup("polite") is not None
    spec = at_submit({"checks": ["polite:word=thanks"]})
    assert spec.check("polite") == {"word": "thanks"}
    good, bad = (checks.run(spec.check_list(), Answer(text)) for text in ("thanks!", "no."))
    assert good[0].passed is True
    assert (bad[0].name, bad[0].passed, bad[0].reason) == ("polite", False,
                                                           "never says 'thanks'")
    [listed] = [c for c in checks.describe() if c["name"] == "polite"]
    assert listed["origin"] == f"entry point {module}:polite"
    assert listed["params"] == [{"name": "word", "required": False, "default": "please"}]


def test_a_name_in_a_spec_is_never_imported_here_or_on_a_worker(site: Path) -> None:
    module = f"planted_{uuid.uuid4().hex[:8]}"
    touched = site / "imported"
    (site / f"{module}.py").write_text(
        f"open({str(touched)!r}, 'w').close()\ndef touch(answer, **params):\n    return True\n")
    named = [{"name": "custom", "params": {"fn": f"{module}:touch"}},
             {"name": f"{module}:touch", "params": {}}, {"name": module, "params": {}}]
    with pytest.raises(ValueError, match="registered by the operator"):
        at_submit({"checks": named[:1]})
    with pytest.raises(ValueError, match="unknown check"):
        at_submit({"checks": named[1:]})
    stored = as_loaded({"checks": named})
    verdicts = checks.run(stored.check_list(), Answer("an answer"))
    assert [v.reason for v in verdicts] == [
        f"check {c['name']!r} is not registered on this worker" for c in named]
    assert not any(v.passed or v.retryable for v in verdicts)
    assert not touched.exists() and module not in sys.modules
    assert stored.model_dump()["checks"] == named  # the stored form is kept as it was


def test_a_registered_check_past_its_time_limit_fails_its_item_and_the_next_one_runs(
        registered: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "CALL_SECONDS", 1.0)
    declared = [("forever", {}), ("short_enough", {"most": "5"})]
    stuck, fine = checks.run(declared, Answer("three short words"))
    assert (stuck.passed, stuck.reason) == (False, "check forever ran past its limit of 1 s "
                                                   "and was stopped")
    assert fine.passed is True
    # The stuck process was killed; at most one (the one that checked `fine`) lives on.
    alive = [p for p in multiprocessing.active_children() if p.name == "nightshift-checks"]
    assert len(alive) <= 1


def test_a_registered_check_that_raises_fails_its_item_with_the_exception(
        registered: None) -> None:
    [v] = checks.run([("broken", {})], Answer("x"))
    assert v.passed is False and "ZeroDivisionError" in v.reason


def test_a_module_the_setting_names_that_cannot_load_refuses_its_checks_not_built_in_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_CHECK_MODULES", "no_such_checks_module")
    registry.forget()
    try:
        assert at_submit({"checks": ["non_empty"]})
        with pytest.raises(ValueError, match="NIGHTSHIFT_CHECK_MODULES: the CHECKS of "
                                             "module no_such_checks_module cannot be loaded"):
            at_submit({"checks": ["short_enough"]})
        stored = as_loaded({"checks": ["short_enough", "non_empty"]})
        [refused, fine] = checks.run(stored.check_list(), Answer("an answer"))
        assert refused.passed is False and "no_such_checks_module" in refused.reason
        assert fine.passed is True
    finally:
        registry.forget()


def test_a_check_registered_twice_is_refused_naming_both_registrations(
        site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"acme_{uuid.uuid4().hex[:8]}"
    install(site, module, POLITE, f"short_enough = {module}:polite")
    monkeypatch.setenv("NIGHTSHIFT_CHECK_MODULES", CHECK_MODULES)
    with pytest.raises(registry.RegistryError, match=(
            f"check short_enough is registered twice: by entry point {module}:polite and by "
            f"module {CHECK_MODULES}")):
        checks.lookup("short_enough")


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([NIGHTSHIFT, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_submit_refuses_a_custom_function_in_one_line_and_runs_nothing(
        tmp_path: Path) -> None:
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Hi"}\n')
    done = _cli("submit", str(prompts), "--check", "custom:fn=pydoc:pipepager,cmd=touch FILE",
                "--database-url", f"sqlite:///{tmp_path / 'n.db'}", cwd=tmp_path)
    assert done.returncode == 2 and not (tmp_path / "FILE").exists()
    [line] = done.stderr.splitlines()
    assert f"custom checks are registered by the operator ({registry.WHERE})" in line


def test_the_checks_command_lists_built_in_and_registered_checks(tmp_path: Path) -> None:
    listed = json.loads(_cli("checks", "--json", cwd=tmp_path,
                             NIGHTSHIFT_CHECK_MODULES=CHECK_MODULES).stdout)
    by_name = {c["name"]: c for c in listed}
    assert by_name["length"]["origin"] == "built in"
    assert by_name["short_enough"] == {
        "name": "short_enough", "kinds": ["generate", "classify"],
        "origin": f"module {CHECK_MODULES}",
        "params": [{"name": "most", "required": False, "default": "50"}]}
    text = _cli("checks", cwd=tmp_path, NIGHTSHIFT_CHECK_MODULES=CHECK_MODULES).stdout
    assert f"mentions       generate/classify word=...  (module {CHECK_MODULES})" in text
