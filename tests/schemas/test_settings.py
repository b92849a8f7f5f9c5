"""Settings: CLI overrides > NIGHTSHIFT_* environment > nightshift.toml > defaults."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import pytest

from schemas.errors import ConfigError
from schemas.settings import DEMO_MODEL, Settings, load, redact


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No NIGHTSHIFT_* variable and no nightshift.toml leak in from the machine."""
    for name in list(os.environ):
        if name.upper().startswith("NIGHTSHIFT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    config = tmp_path / "conf" / "custom.toml"
    config.parent.mkdir()
    config.write_text(text)
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(config))


def test_defaults_without_env_or_file() -> None:
    settings = load()
    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.database_url == "sqlite:///nightshift.db"
    assert settings.model == DEMO_MODEL
    assert settings.lease_seconds == 30.0


def test_environment_variables_set_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_DATABASE_URL", "postgresql://u:p@db/ns")
    monkeypatch.setenv("NIGHTSHIFT_LEASE_SECONDS", "5")
    settings = load()
    assert settings.database_url == "postgresql://u:p@db/ns"
    assert settings.lease_seconds == 5.0


def test_config_file_named_by_nightshift_config_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, monkeypatch, 'model = "org/other"\nmodel_dir = "/srv/models"\n')
    settings = load()
    assert settings.model == "org/other"
    assert settings.model_dir == Path("/srv/models")


def test_nightshift_toml_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "nightshift.toml").write_text('broker_url = "redis://cache:6379/1"\n')
    assert load().broker_url == "redis://cache:6379/1"


def test_environment_beats_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, monkeypatch, 'model = "from-file"\n')
    monkeypatch.setenv("NIGHTSHIFT_MODEL", "from-env")
    assert load().model == "from-env"


def test_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_MODEL", "from-env")
    assert load(model="from-cli").model == "from-cli"


def test_none_overrides_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_MODEL", "from-env")
    settings = load(model=None, broker_url=None)
    assert settings.model == "from-env"
    assert settings.broker_url == "redis://localhost:6379/0"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://u:p@h/db", "postgresql://u:***@h/db"),
        ("postgresql+psycopg://user:pa55@db:5432/ns", "postgresql+psycopg://user:***@db:5432/ns"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("postgresql://user@h/db", "postgresql://user@h/db"),
        ("sqlite:///nightshift.db", "sqlite:///nightshift.db"),
    ],
)
def test_redact_hides_only_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:a/b@c@host:5432/db", "postgresql://u:***@host:5432/db"),
        ("postgresql://user@server:pw@host/db", "postgresql://user@server:***@host/db"),
        ("redis://:pw@host/0?ssl_cert_reqs=none&x=a@b", "redis://:***@host/0?ssl_cert_reqs=none&x=a@b"),
    ],
)
def test_redact_masks_a_password_holding_at_signs_up_to_the_last_one(url: str,
                                                                     shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://host:6379/0?password=s3cret", "redis://host:6379/0?password=***"),
        ("redis://host/0?db=1&PASSWORD=s3cret&ssl=true", "redis://host/0?db=1&PASSWORD=***&ssl=true"),
        ("postgresql://u@h/db?sslpassword=k3y&sslmode=require",
         "postgresql://u@h/db?sslpassword=***&sslmode=require"),
        ("postgresql://h/db?user=u&pwd=a@b", "postgresql://h/db?user=u&pwd=***"),
        ("redis://h/0?pass=x&token=t&client_secret=c&api_key=k",
         "redis://h/0?pass=***&token=***&client_secret=***&api_key=***"),
        ("redis://:pw@h/0?password=again", "redis://:***@h/0?password=***"),
        ("redis://h/0?password=", "redis://h/0?password="),
    ],
)
def test_redact_masks_passwords_in_the_query_string(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize("url", ["sqlite:////tmp/my@dir/ns.db", "sqlite:///C:/data@x/ns.db",
                                 "redis://localhost:6379/0?ssl_cert_reqs=none",
                                 "redis://user@host:6379/0"])
def test_redact_leaves_urls_without_a_password_as_they_are(url: str) -> None:
    assert redact(url) == url


def test_check_modules_are_comma_separated_in_the_environment_and_a_list_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "nightshift.toml").write_text('check_modules = ["a.checks", "b"]\n')
    assert load().check_modules == ["a.checks", "b"]
    monkeypatch.setenv("NIGHTSHIFT_CHECK_MODULES", " ours.checks, theirs ,")
    assert load().check_modules == ["ours.checks", "theirs"]


def test_a_bad_value_names_the_variable_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_WINDOW", "many")
    with pytest.raises(ConfigError, match="NIGHTSHIFT_WINDOW: must be a whole number, not 'many'"):
        load()


def test_a_bad_value_in_the_file_names_the_file_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, monkeypatch, "stall_seconds = 0\n")
    with pytest.raises(ConfigError, match=r"custom.toml: stall_seconds: must be above 0, not 0"):
        load()


@pytest.mark.parametrize(("given", "message"), [
    ({"window": 0}, "window: must be at least 1, not 0"),
    ({"window": 2.5}, "window: must be a whole number, not 2.5"),
    ({"lease_seconds": True}, "lease_seconds: must be a number, not True"),
    ({"max_file_bytes": -1}, "max_file_bytes: must be above 0, not -1"),
])
def test_out_of_range_or_mistyped_overrides_are_refused(given: dict[str, object],
                                                         message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(**given)


def test_numbers_and_paths_from_the_environment_take_their_types(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_WINDOW", "8")
    monkeypatch.setenv("nightshift_files_dir", "/srv/files")
    settings = load()
    assert settings.window == 8
    assert settings.files_dir == Path("/srv/files")


def test_unknown_keys_in_the_file_are_ignored_and_broken_toml_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, monkeypatch, 'model = "m"\n[server]\nport = 1\n')
    assert load().model == "m"
    (tmp_path / "conf" / "custom.toml").write_text("model = \n")
    with pytest.raises(ConfigError, match="custom.toml is not valid TOML"):
        load()


def test_every_setting_can_be_given_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    given = {"broker_url": "redis://b:1/2", "database_url": "sqlite:///x.db", "model": "m",
             "model_dir": "/srv/models", "lease_seconds": "7.5", "stall_seconds": "9",
             "window": "3", "check_modules": "a,b", "files_dir": "/srv/files",
             "max_file_bytes": "1000"}
    assert set(given) == {setting.name for setting in fields(Settings)}
    for name, text in given.items():
        monkeypatch.setenv(f"NIGHTSHIFT_{name.upper()}", text)
    assert load() == Settings(broker_url="redis://b:1/2", database_url="sqlite:///x.db",
                              model="m", model_dir=Path("/srv/models"), lease_seconds=7.5,
                              stall_seconds=9.0, window=3, check_modules=["a", "b"],
                              files_dir=Path("/srv/files"), max_file_bytes=1000)


def test_whole_numbers_may_be_written_as_decimals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, monkeypatch, "window = 64.0\nmax_file_bytes = 2e8\n")
    monkeypatch.setenv("NIGHTSHIFT_STALL_SECONDS", "60")
    settings = load()
    assert (settings.window, settings.max_file_bytes, settings.stall_seconds) == (
        64, 200_000_000, 60.0)


def test_file_keys_are_read_in_any_case(tmp_path: Path) -> None:
    (tmp_path / "nightshift.toml").write_text('Database_URL = "sqlite:///cased.db"\n')
    assert load().database_url == "sqlite:///cased.db"


@pytest.mark.parametrize("named", ["", "."])
def test_a_config_variable_naming_no_file_reads_no_file(
    named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", named)
    assert load().model == DEMO_MODEL


def test_a_config_file_that_is_not_text_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad.toml").write_bytes(b"model = '\xff'\n")
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(tmp_path / "bad.toml"))
    with pytest.raises(ConfigError, match="bad.toml"):
        load()
