"""Servers the fault suite owns: a Redis and a PostgreSQL cluster of its own, on free local
ports in a temporary directory, which it may restart under a running job.

Restarting Redis loses its data (no snapshot, no append-only file): every message on the
broker is gone. Restarting PostgreSQL drops every connection; its data stays.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import redis


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """`redis-server` on 127.0.0.1 and a free port, nothing persisted."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("a")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: redis.Redis.from_url(self.url).ping(), f"redis on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Killed and started again on the same port: every message is lost."""
        self.stop()
        self.start()


class PostgresCluster:
    """A cluster made by `initdb` in the work directory, trust authentication, listening on
    127.0.0.1 and a free port. As root, the server runs as the `postgres` user (initdb
    refuses root), and the directory is handed to that user."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir / "pg", free_port()
        self.data, self.sockets = self.workdir / "data", self.workdir / "sockets"
        self.bin = Path(_newest_bin())

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/nightshift"

    def init(self) -> None:
        self.sockets.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.workdir.parent, "postgres")
            for path in (self.workdir, self.sockets):
                shutil.chown(path, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        self.start()
        admin = self.url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE nightshift")

    def start(self) -> None:
        # A throwaway cluster: durability off, so the tests measure nightshift, not fsync.
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", options,
                  "-l", str(self.workdir / "postgres.log"), "-w", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """A fast shutdown and a start: every client connection is dropped."""
        self.stop()
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              cwd=self.workdir)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} exited {done.returncode}: {done.stderr.strip()}")


def _newest_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                   key=lambda p: int(Path(p).parent.name.split(".")[0]))
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL's initdb is not installed (looked in "
                           "/usr/lib/postgresql/*/bin and on PATH)")
    return str(Path(initdb).parent)


def _wait(ready: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():  # type: ignore[operator]
                return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start in {timeout:.0f}s") from None
        time.sleep(0.1)
