"""Real documents the tests generate: PDFs with and without a text layer, an encrypted
PDF, a DOCX with a table, and an HTML page full of navigation noise."""

from __future__ import annotations

from pathlib import Path

import docx
from fpdf import FPDF
from PIL import Image
from pypdf import PdfReader, PdfWriter

PAGES = ["The first page talks about apples.", "The second page is about pears.",
         "The third page ends with plums."]
HTML = """<!doctype html>
<html><head><title>Site title</title><style>body { color: STYLENOISE; }</style>
<script>var tracker = "SCRIPTNOISE";</script></head>
<body>
  <header><a href="/">Home</a> HEADERNOISE</header>
  <nav><ul><li><a href="/a">NAVNOISE one</a></li><li>NAVNOISE two</li></ul></nav>
  <div role="navigation">ROLENOISE</div>
  <!-- COMMENTNOISE -->
  <main>
    <h1>Quarterly report</h1>
    <p>Revenue grew
       by <b>twelve</b> percent.</p>
    <p>Costs fell.<br>Margins rose.</p>
    <div hidden>HIDDENNOISE</div>
    <table><tr><th>Region</th><th>Sales</th></tr><tr><td>North</td><td>40</td></tr></table>
  </main>
  <aside>ASIDENOISE</aside>
  <footer>FOOTERNOISE &copy; 2026</footer>
  <script>document.write("SCRIPTNOISE2")</script>
</body></html>
"""


def write_pdf(path: Path, pages: list[str]) -> Path:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    pdf.output(str(path))
    return path


def write_image_pdf(path: Path) -> Path:
    """A 'scanned' PDF: two pages that are pictures of text, with no text layer."""
    image = path.with_suffix(".png")
    Image.new("RGB", (200, 100), "white").save(image)
    pdf = FPDF()
    for _ in range(2):
        pdf.add_page()
        pdf.image(str(image), x=10, y=10, w=180)
    pdf.output(str(path))
    image.unlink()
    return path


def write_encrypted_pdf(path: Path, user_password: str) -> Path:
    writer = PdfWriter(clone_from=PdfReader(write_pdf(path, PAGES[:1])))
    writer.encrypt(user_password, owner_password="owner", algorithm="AES-256")
    with path.open("wb") as fh:
        writer.write(fh)
    return path


def write_docx(path: Path) -> Path:
    document = docx.Document()
    document.add_heading("Minutes", level=1)
    document.add_paragraph("The board met on Monday.")
    table = document.add_table(rows=2, cols=2)
    for (r, c), text in {(0, 0): "Item", (0, 1): "Vote", (1, 0): "Budget", (1, 1): "Yes"}.items():
        table.cell(r, c).text = text
    document.add_paragraph("The meeting closed at noon.")
    document.save(str(path))
    return path
