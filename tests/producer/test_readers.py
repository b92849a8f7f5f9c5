"""Streaming inputs into rows: each bad row is one RowError with its line number."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from producer.readers import Row, RowError, Skipped, read
from schemas.errors import InputError
from schemas.spec import JobSpec
from worker.prompts import user_prompt


def jsonl(path: Path, *rows: Any) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def rows(path: Path, fmt: str = "auto", template: str | None = None) -> list[Row | RowError]:
    return list(read(path, fmt, template))


def only_error(items: list[Row | RowError]) -> RowError:
    errors = [r for r in items if isinstance(r, RowError)]
    assert len(errors) == 1, items
    return errors[0]


def test_prompt_rows_become_rows_with_their_ids(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "in.jsonl", {"id": "a", "prompt": "Hi"}, {"id": 7, "prompt": "Yo"})
    assert rows(path) == [Row(1, "a", {"prompt": "Hi"}), Row(2, "7", {"prompt": "Yo"})]


def test_messages_rows_keep_their_messages(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    path = jsonl(tmp_path / "in.jsonl", {"id": "m", "messages": messages, "reference": "R"})
    assert rows(path) == [Row(1, "m", {"messages": messages, "reference": "R"})]


def test_id_defaults_to_the_line_number(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "in.jsonl", {"prompt": "a"}, {"id": "", "prompt": "b"})
    assert [r.key for r in rows(path) if isinstance(r, Row)] == ["1", "2"]


def test_malformed_json_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "in.jsonl", {"prompt": "ok"}, '{"prompt": "broken"', {"prompt": "ok"})
    result = rows(path)
    error = only_error(result)
    assert error.line == 2
    assert "malformed JSON" in error.reason
    assert [r.line for r in result if isinstance(r, Row)] == [1, 3]


def test_non_utf8_line_is_reported_with_its_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n{"prompt": "ok"}\n')
    error = only_error(rows(path))
    assert error.line == 2
    assert "not UTF-8" in error.reason and "0xe9" in error.reason
    assert str(error).startswith("line 2: ")


def test_unknown_field_is_reported_by_name(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "in.jsonl", {"prompt": "Hi", "temprature": 0.1})
    assert only_error(rows(path)) == RowError(1, "temprature: unknown field")


def test_row_without_prompt_is_reported(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "in.jsonl", {"id": "x", "text": "Hi"})
    assert only_error(rows(path)).line == 1


def test_non_object_json_line_is_reported(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "in.jsonl", {"prompt": "ok"}, "[1, 2]")
    assert only_error(rows(path)) == RowError(2, "expected a JSON object, got list")


def test_template_renders_arbitrary_fields(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "in.jsonl", {"id": "q1", "title": "Dune", "reference": 5})
    assert rows(path, template="Review {{ title }}") == [
        Row(1, "q1", {"prompt": "Review Dune", "reference": "5"})
    ]


def test_template_missing_field_is_a_row_error_naming_it(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "in.jsonl", {"title": "Dune"}, {"name": "x"})
    result = rows(path, template="Review {{ title }}")
    error = only_error(result)
    assert error.line == 2
    assert "'title' is undefined" in error.reason
    assert isinstance(result[0], Row)


def test_template_rendering_nothing_is_a_row_error(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "in.jsonl", {"title": "  "})
    assert "empty prompt" in only_error(rows(path, template="{{ title }}")).reason


def test_blank_lines_are_skipped_but_line_numbers_kept(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "in.jsonl", "", {"prompt": "a"}, "   ", "", {"prompt": "b"})
    assert [(r.line, r.key) for r in rows(path) if isinstance(r, Row)] == [(2, "2"), (5, "5")]
    assert len(rows(path)) == 2


def test_empty_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(InputError, match="empty"):
        rows(path)


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        rows(tmp_path / "nope.jsonl")


def openai_line(custom_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def test_openai_batch_is_detected_and_keyed_by_custom_id(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    body = {"model": "smollm2-135m-instruct", "messages": messages, "max_tokens": 9}
    path = jsonl(tmp_path / "batch.jsonl", openai_line("req-1", "/v1/chat/completions", body))
    assert rows(path) == [Row(1, "req-1", {
        "url": "/v1/chat/completions", "sampling": {"max_tokens": 9}, "messages": messages,
    })]


def test_openai_completions_body_becomes_a_raw_prompt(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "batch.jsonl",
                 openai_line("c", "/v1/completions", {"prompt": "Once", "model": "m"}))
    (row,) = rows(path)
    assert isinstance(row, Row)
    assert row.payload["raw"] is True
    assert row.payload["prompt"] == "Once"


def test_openai_bad_line_is_a_row_error_with_its_line(tmp_path: Path) -> None:
    user = [{"role": "user", "content": "x"}]
    good = openai_line("a", "/v1/chat/completions", {"messages": user})
    bad = openai_line("b", "/v1/chat/completions", {"messages": user, "tools": [{}]})
    result = rows(jsonl(tmp_path / "batch.jsonl", good, bad, "{oops"))
    errors = [r for r in result if isinstance(r, RowError)]
    assert [e.line for e in errors] == [2, 3]
    assert "body.tools" in errors[0].reason and "tool calling" in errors[0].reason
    assert "malformed JSON" in errors[1].reason


def test_csv_rows_render_through_the_template(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,city,country\nc1,Paris,France\n,"Lima, Peru",Peru\n')
    assert rows(path, template="Where is {{ city }} ({{ country }})?") == [
        Row(2, "c1", {"prompt": "Where is Paris (France)?"}),
        Row(3, "3", {"prompt": "Where is Lima, Peru (Peru)?"}),
    ]


def test_csv_without_template_reads_prompt_columns(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,prompt\nx,Hello\n")
    assert rows(path) == [Row(2, "x", {"prompt": "Hello"})]


@pytest.mark.parametrize("line", ["a,b,c", "a"])
def test_csv_row_with_a_wrong_column_count_is_a_row_error(tmp_path: Path, line: str) -> None:
    path = tmp_path / "in.csv"
    path.write_text(f"id,prompt\nok,Hi\n{line}\nok2,Yo\n")
    result = rows(path)
    error = only_error(result)
    assert error.line == 3
    assert "expected 2 columns" in error.reason
    assert [r.key for r in result if isinstance(r, Row)] == ["ok", "ok2"]


def test_empty_csv_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("")
    with pytest.raises(InputError, match="empty"):
        rows(path)


def test_document_folder_gives_one_row_per_file_keyed_by_relative_path(tmp_path: Path) -> None:
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("Alpha")
    (tmp_path / "docs" / "sub" / "b.md").write_text("# Beta")
    (tmp_path / "docs" / "skip.png").write_bytes(b"\x89PNG")
    result = rows(tmp_path / "docs", template="{{ name }}: {{ text }}")
    spec = JobSpec(template="{{ name }}: {{ text }}")
    assert [(r.line, r.key, user_prompt(spec, r.payload), r.payload["document"]) for r in result
            if isinstance(r, Row)] == [
        (1, "a.txt", "a: Alpha", str(tmp_path / "docs" / "a.txt")),
        (3, "sub/b.md", "b: # Beta", str(tmp_path / "docs" / "sub" / "b.md")),
    ]
    assert [r for r in result if not isinstance(r, Row)] == [
        Skipped(str(tmp_path / "docs" / "skip.png"), "unsupported file type '.png' "
                "(nightshift reads .pdf, .docx, .html, .htm, .xhtml, .md, .markdown, .txt)")]


def test_document_text_is_the_prompt_without_a_template(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Alpha")
    assert [(r.key, user_prompt(JobSpec(), r.payload)) for r in rows(tmp_path)
            if isinstance(r, Row)] == [("a.txt", "Alpha")]


def test_empty_document_is_skipped_by_name_not_an_invalid_row(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Alpha")
    (tmp_path / "b.txt").write_text(" \n")
    assert rows(tmp_path)[1] == Skipped(str(tmp_path / "b.txt"), "no text in the document")


def test_non_utf8_document_is_skipped_by_name(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"caf\xe9")
    skipped = rows(tmp_path)[0]
    assert isinstance(skipped, Skipped) and skipped.document == str(tmp_path / "a.txt")
    assert skipped.reason.startswith("not UTF-8")


def test_folder_without_documents_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="no"):
        rows(tmp_path)


def test_template_runtime_error_is_a_row_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,n\na,1\n")
    assert only_error(rows(path, template="{{ n + 1 }}")).line == 2


@pytest.mark.parametrize("obj", [
    {"id": "a", "prompt": "Hi"}, {"id": 7, "prompt": "Hi"}, {"prompt": "Hi"},
    {"id": None, "prompt": "Hi"}, {"id": "", "prompt": "Hi"}, {"id": True, "prompt": "Hi"},
    {"id": 1.5, "prompt": "Hi"}, {"id": "a", "prompt": ""}, {"id": "a", "prompt": 5},
    {"id": "a", "prompt": None}, {"id": "a", "prompt": "Hi", "extra": 1},
    {"id": "a", "prompt": "Hi", "reference": "R"}, {"id": ["x"], "prompt": "Hi"},
])
def test_the_fast_path_for_prompt_rows_gives_pydantics_verdict(obj: dict[str, Any]) -> None:
    """Plain {"id", "prompt"} rows skip pydantic; every row gets the same Row or message."""
    from pydantic import ValidationError

    from producer.readers import _fields_row
    from schemas.errors import reason
    from schemas.rows import PromptRow

    key = str(obj["id"]) if obj.get("id") not in (None, "") else "3"
    try:
        expected: Row | RowError = Row(3, key, PromptRow.model_validate(obj).model_dump(
            exclude_none=True, exclude={"id"}))
    except ValidationError as exc:
        expected = RowError(3, reason(exc))
    assert _fields_row(3, obj, None) == expected


def test_lines_the_fast_decoder_refuses_get_the_json_modules_message(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "\\ud800"}\n{"prompt": "x", "n": NaN}\n'
                     b'\xef\xbb\xbf{"prompt": "bom"}\n{"prompt": "ok"} x\n')
    result = rows(path, "jsonl")
    assert [type(r).__name__ for r in result] == ["Row", "Row", "RowError", "RowError",
                                                  "RowError"]
    assert isinstance(result[1], Row) and result[1].payload == {"prompt": "\ud800"}
    assert str(result[2]) == "line 3: n: unknown field"
    assert str(result[3]).startswith("line 4: malformed JSON: Unexpected UTF-8 BOM")
    assert str(result[4]) == "line 5: malformed JSON: Extra data (column 18)"
