"""Requests are judged before their bodies are read (producer.server.intake): a body
from a caller without a live key, or over the server's limit, is answered at once, so it
costs the server neither memory nor disk. Spoken over a raw socket, because the SDK
would send the whole body before it reads the answer."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import Server, Stack

BOUNDARY = "nightshiftboundary"


@pytest.fixture
def small_server(stack: Stack) -> Iterator[Server]:
    s = Server(stack, max_file_bytes=1000)
    yield s
    s.stop()


def _exchange(server: Server, head: str, body: bytes = b"", *, chunked: Sequence[bytes] = ()
              ) -> str:
    """What the server answers to `head` and the first part of a body, within 10 s: a
    server that waited for the rest of the body would answer nothing."""
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        try:
            sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
            for piece in chunked:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest arrived
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            got = sock.recv(65536)
            if not got:
                break
            answer += got
    return answer.decode(errors="replace")


def _upload_head(server: Server, length: int, key: str | None) -> str:
    auth = f"Authorization: Bearer {key}\n" if key else ""
    return (f"POST /v1/files HTTP/1.1\nHost: {urlsplit(server.url).netloc}\n{auth}"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\n"
            f"Content-Length: {length}\n")


def test_an_upload_without_a_live_key_is_refused_before_its_body(small_server: Server) -> None:
    start = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
             "filename=\"in.jsonl\"\r\n\r\n").encode() + b"x" * 1000
    for key in (None, "sk-not-a-key"):
        answer = _exchange(small_server, _upload_head(small_server, 10**10, key), start)
        assert answer.startswith("HTTP/1.1 401"), answer
        assert "invalid_api_key" in answer


def test_a_body_declared_over_the_limit_is_refused_unread(small_server: Server) -> None:
    key = small_server.key("team")
    answer = _exchange(small_server, _upload_head(small_server, 5 << 20, key), b"x" * 1000)
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "over this server's limit" in answer
    assert not small_server.files_dir.exists() or not any(small_server.files_dir.iterdir())


def test_a_chunked_body_is_refused_once_it_crosses_the_limit(small_server: Server) -> None:
    key = small_server.key("team")
    head = (f"POST /v1/batches HTTP/1.1\nHost: {urlsplit(small_server.url).netloc}\n"
            f"Authorization: Bearer {key}\nContent-Type: application/json\n"
            "Transfer-Encoding: chunked\n")
    answer = _exchange(small_server, head, chunked=[b"[" + b" " * 65536] * 20)
    assert answer.startswith("HTTP/1.1 413"), answer


def test_an_unreachable_database_is_a_503_before_the_body_as_after(tmp_path: Path) -> None:
    """The key is looked up outside the routes: a database that cannot be reached still
    answers in OpenAI's body, as the routes do."""
    from fastapi.testclient import TestClient

    from producer.server.app import create_app
    from schemas.settings import load

    app = create_app(load(database_url="postgresql://nobody@127.0.0.1:1/x",
                          files_dir=tmp_path / "files"))
    with TestClient(app) as client:
        auth = {"Authorization": "Bearer sk-any"}
        posted = client.post("/v1/files", headers=auth, data={"purpose": "batch"},
                             files={"file": ("in.jsonl", b"{}\n")})
        listed = client.get("/v1/batches", headers=auth)
    for answer in (posted, listed):
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["type"] == "server_error"
        assert answer.json()["error"]["message"].startswith("database: connection failed")
