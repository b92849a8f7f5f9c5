"""Document extraction speed: how long `submit DIR` spends turning files into text, per kind.

Writes a folder of generated PDFs, DOCX, HTML and Markdown files, then reads it the way
submit does (extraction, hash, template), on one CPU and on all of them (Linux). Prints
one JSON line per kind and process count; `os.getloadavg()` says how busy the machine was.

    python -m bench.documents --files 50 --pages 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

PARAGRAPH = ("Revenue grew in every region this quarter, led by the north, while costs fell "
             "for the third quarter running and margins reached their highest level in years. ")


def write_folder(root: Path, files: int, pages: int) -> None:
    """Each file holds the same text: `pages` pages of six paragraphs."""
    import docx
    from fpdf import FPDF

    body = [PARAGRAPH * 3] * (6 * pages)
    for kind in ("pdf", "docx", "html", "md"):
        (root / kind).mkdir()
    for n in range(files):
        pdf = FPDF()
        pdf.set_font("Helvetica", size=10)
        for page in range(pages):
            pdf.add_page()
            pdf.multi_cell(0, 5, "\n\n".join(body[page * 6:(page + 1) * 6]))
        pdf.output(str(root / "pdf" / f"{n}.pdf"))
        document = docx.Document()
        for paragraph in body:
            document.add_paragraph(paragraph)
        document.save(str(root / "docx" / f"{n}.docx"))
        html = "".join(f"<p>{p}</p>" for p in body)
        (root / "html" / f"{n}.html").write_text(
            f"<html><body><nav>menu</nav><main>{html}</main><script>x()</script></body></html>")
        (root / "md" / f"{n}.md").write_text("\n\n".join(body))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=50, help="files of each kind")
    parser.add_argument("--pages", type=int, default=20, help="pages per document")
    args = parser.parse_args()
    from producer.readers import Row, read

    print(json.dumps({"load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count()}))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root, args.files, args.pages)
        cpus = os.sched_getaffinity(0)
        for kind, processes in itertools.product(("pdf", "docx", "html", "md"),
                                                 sorted({1, len(cpus)})):
            os.sched_setaffinity(0, sorted(cpus)[:processes])  # 1: parsed in this process
            size = sum(p.stat().st_size for p in (root / kind).iterdir())
            start = time.perf_counter()
            rows = [r for r in read(root / kind, "documents", "Summarize: {{ text }}")
                    if isinstance(r, Row)]
            seconds = time.perf_counter() - start
            os.sched_setaffinity(0, cpus)
            chars = sum(len(r.payload["text"]) for r in rows)
            print(json.dumps({"kind": kind, "processes": processes, "files": len(rows),
                              "pages_each": args.pages, "seconds": round(seconds, 2),
                              "files_per_s": round(len(rows) / seconds, 1),
                              "pages_per_s": round(len(rows) * args.pages / seconds, 1),
                              "file_mb_per_s": round(size / seconds / 1e6, 2),
                              "text_mb_per_s": round(chars / seconds / 1e6, 2)}))


if __name__ == "__main__":
    main()
