"""Patterns the engine's grammar backends refuse are refused at submit, with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from producer import grammar
from producer.cli import cli
from schemas.errors import InputError
from schemas.spec import JobSpec

LOOKAHEAD = r"^(?=.*\d).*$"


def test_a_lookahead_pattern_on_a_constrain_ladder_is_refused_naming_the_reason() -> None:
    spec = JobSpec(checks=[f"regex:pattern={LOOKAHEAD}"], ladder=["constrain"])
    with pytest.raises(InputError, match="look-around.*is not supported"):
        grammar.check(spec)


def test_patterns_the_engine_compiles_or_never_sees_pass() -> None:
    grammar.check(JobSpec(checks=[r"regex:pattern=^\d+$"], ladder=["constrain"]))
    grammar.check(JobSpec(checks=[f"regex:pattern={LOOKAHEAD}"], ladder=["resample"]))
    assert grammar.refusal({"regex": r"(a)\1"}) == "backreferences are not supported"
    grammar.check(JobSpec(json_schema={"type": "object", "properties": {"a": {"type": "string"}}}))


def test_a_json_schema_both_backends_refuse_is_refused_and_one_xgrammar_takes_passes() -> None:
    assert grammar.refusal({"json": {"type": "string", "pattern": "(a)\\1"}}) == (
        "backreferences are not supported")
    # llguidance refuses look-ahead in a schema's pattern; vLLM's xgrammar takes it.
    assert grammar.refusal({"json": {"type": "string", "pattern": "(?=a)a"}}) is None


def test_submit_refuses_it_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "Say a number."}) + "\n")
    db_file = tmp_path / "ns.db"
    result = CliRunner().invoke(cli, [
        "submit", str(path), "--check", f"regex:pattern={LOOKAHEAD}", "--ladder", "constrain",
        "--database-url", f"sqlite:///{db_file}", "--broker-url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 2
    assert "look-around" in result.output and "Traceback" not in result.output
    assert not db_file.exists()
