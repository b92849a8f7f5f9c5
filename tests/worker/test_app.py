"""The Celery app: JSON only, acks late, one at a time, TLS that verifies."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from schemas.errors import ModelError
from worker.app import app_for, celery_app
from worker.models import check_name


def test_the_app_accepts_json_only_and_acks_late_one_at_a_time() -> None:
    for app in (celery_app, app_for("redis://127.0.0.1:6379/13")):
        assert app.conf.accept_content == ["json"]
        assert app.conf.task_serializer == "json"
        assert app.conf.task_acks_late is True
        assert app.conf.worker_prefetch_multiplier == 1


def test_a_rediss_url_verifies_the_server_certificate_unless_told_otherwise() -> None:
    assert app_for("rediss://:pw@cache:6380/0").conf.broker_use_ssl == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert not app_for("rediss://:pw@cache:6380/0?ssl_cert_reqs=none").conf.broker_use_ssl
    assert not app_for("redis://cache:6379/0").conf.broker_use_ssl


def test_model_names_that_can_be_nothing_are_refused_before_submit(tmp_path: Path) -> None:
    check_name("smollm2-135m-instruct")
    check_name("meta-llama/Llama-3.1-8B-Instruct")
    (tmp_path / "config.json").write_text("{}")
    check_name(str(tmp_path))
    with pytest.raises(ModelError, match="unknown model 'gpt-4o-mini'"):
        check_name("gpt-4o-mini")
    with pytest.raises(ModelError, match="has no config.json"):
        check_name(str(tmp_path.parent))
