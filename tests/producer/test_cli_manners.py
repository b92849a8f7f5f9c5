"""Everyday CLI manners: examples in every --help, --json on every read command, shell
completion, exit codes by kind of error, colour only when wanted, nightshift.toml."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import click
import psycopg
import pytest
from click.testing import CliRunner
from conftest import PG_ADMIN, Stack

from producer.cli import cli

ROOT = Path(__file__).resolve().parents[2]
# `report` joins the list as soon as the command exists.
READ_COMMANDS = ["status", "watch", "results", "cancel", "reconcile", "db upgrade",
                 *(["report"] if "report" in cli.commands else [])]


def commands(group: click.Group = cli, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        yield prefix + name, command
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix}{name} ")


def command(path: str) -> click.Command:
    found: click.Command = cli
    for part in path.split():
        assert isinstance(found, click.Group)
        found = found.commands[part]
    return found


@pytest.mark.parametrize("name", [n for n, _ in commands()])
def test_every_command_has_examples_in_its_help(name: str) -> None:
    result = CliRunner().invoke(cli, [*name.split(), "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and "nightshift " in result.output.split("Examples:")[1]


@pytest.mark.parametrize("name", READ_COMMANDS)
def test_every_read_command_takes_json(name: str) -> None:
    assert "--json" in {opt for p in command(name).params for opt in p.opts}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_clicks_script_for_the_shell(shell: str) -> None:
    result = CliRunner().invoke(cli, ["completion", shell])
    assert result.exit_code == 0
    assert "_NIGHTSHIFT_COMPLETE" in result.output and f"{shell}_complete" in result.output


def test_completion_answers_with_subcommands_and_choices() -> None:
    """What the printed script asks the program, answered by the real entry point."""
    def complete(words: str, cword: int) -> list[str]:
        env = {**os.environ, "_NIGHTSHIFT_COMPLETE": "bash_complete", "COMP_WORDS": words,
               "COMP_CWORD": str(cword)}
        done = subprocess.run([sys.executable, "-c", "from producer.cli import main; main()"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        return [line.split(",", 1)[1] for line in done.stdout.splitlines()]

    assert complete("nightshift res", 1) == ["results"]
    assert complete("nightshift results JOB --format ", 4) == ["jsonl", "csv", "parquet",
                                                               "openai"]


@pytest.fixture
def env(stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Stack:
    monkeypatch.setenv("NIGHTSHIFT_DATABASE_URL", stack.db_url)
    monkeypatch.setenv("NIGHTSHIFT_BROKER_URL", stack.broker_url)
    monkeypatch.chdir(tmp_path)
    return stack


def submit(tmp_path: Path) -> str:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "prompt": "Hi"}\n')
    result = CliRunner().invoke(cli, ["submit", str(path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["job_id"])


def test_read_commands_print_json(env: Stack, tmp_path: Path) -> None:
    job = submit(tmp_path)
    runner = CliRunner()
    upgraded = json.loads(runner.invoke(cli, ["db", "upgrade", "--json"]).stdout)
    assert set(upgraded) == {"database", "revision"} and upgraded["revision"]
    reconciled = json.loads(runner.invoke(cli, ["reconcile", "--json"]).stdout)
    assert set(reconciled) == {"started", "expired", "abandoned", "resent"}
    cancelled = json.loads(runner.invoke(cli, ["cancel", job, "--json"]).stdout)
    assert cancelled["job_id"] == job and cancelled["state"] == "cancelled"
    watched = runner.invoke(cli, ["watch", job, "--json"])
    assert watched.exit_code == 1  # cancelled, not completed
    assert json.loads(watched.stdout.splitlines()[-1])["state"] == "cancelled"


@pytest.mark.parametrize(("args", "code"), [
    (["status", "no-such-job"], 4),
    (["results", "no-such-job"], 4),
    (["cancel", "no-such-job"], 4),
    (["results", "x", "--format", "parquet"], 2),
    (["status", "--database-url", "nosuchdriver://x"], 2),
    (["status", "--database-url", "postgresql://nobody@127.0.0.1:1/x"], 3),
    (["results"], 2),  # a usage error
])
def test_exit_codes_say_what_kind_of_error(env: Stack, args: list[str], code: int) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output


def test_a_bad_setting_is_one_line_naming_its_variable(
        env: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_WINDOW", "0")
    result = CliRunner().invoke(cli, ["reconcile"])
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: settings: NIGHTSHIFT_WINDOW: must be at least 1, not '0'\n"


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database nightshift has never written to: no tables at all."""
    if request.param == "sqlite":
        sqlite3.connect(tmp_path / "empty.db").close()
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"nightshift_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_status_of_a_job_in_a_database_without_tables_says_to_upgrade(
        env: Stack, empty_database: str) -> None:
    """The one-job read goes straight to the tables: where there are none, one line
    names the fix, not a driver's traceback."""
    result = CliRunner().invoke(cli, ["status", "abcdef123", "--database-url", empty_database])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    assert "no nightshift tables" in result.output and "nightshift db upgrade" in result.output


def test_errors_are_red_on_a_terminal_and_plain_with_no_color(
        env: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    coloured = CliRunner().invoke(cli, ["status", "no-such-job"], color=True)
    assert "\x1b[31m" in coloured.stderr
    monkeypatch.setenv("NO_COLOR", "1")
    plain = CliRunner().invoke(cli, ["status", "no-such-job"], color=True)
    assert plain.exit_code == 4 and "\x1b[" not in plain.stderr
    assert plain.stderr.startswith("error: no job 'no-such-job'")


def test_nightshift_toml_in_the_working_directory_is_read(
        env: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    job = submit(tmp_path)
    monkeypatch.delenv("NIGHTSHIFT_DATABASE_URL")
    (tmp_path / "nightshift.toml").write_text(f'database_url = "{env.db_url}"\n')
    result = CliRunner().invoke(cli, ["status", job, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["job_id"] == job
    (tmp_path / "nightshift.toml").write_text('database_url = "nosuchdriver://x"\n')
    assert CliRunner().invoke(cli, ["status", job, "--json"]).exit_code == 2
