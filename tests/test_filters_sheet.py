"""The zine table's contact-sheet PDF: A4 pages of curated pieces with captions as the phone shows them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pikepdf
import pytest

from kiosk.web.screenshots import make_piece
from tests.filters_helpers import pdf_fonts

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]
A4 = (595.28, 841.89)


def test_contact_sheet_pdf_of_the_keepers(store, tmp_path):
    from pypdf import PdfReader

    pieces = [make_piece(store, f"realm {i}", seed=20 + i, size=96, sigma=1.9995 if i == 0 else 0.5)
              for i in range(14)]
    for p in pieces[:13]:
        store.set_curation(p.id, "keep")
    out = tmp_path / "zine.pdf"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "kiosk", "contact-sheet", "--curation", "keep", "--cols", "3",
                           "--data", str(store.root), "--out", str(out), "--title", "Zine table"],
                          env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with pikepdf.open(out) as pdf:
        assert len(pdf.pages) == 2  # 3 x 3 per A4 page: 9 + 4
        for page in pdf.pages:
            box = [float(v) for v in page.MediaBox]
            assert box[2] == pytest.approx(A4[0], abs=0.1) and box[3] == pytest.approx(A4[1], abs=0.1)
        assert [len(p.get_images()) for p in pdf.pages] == [9, 4]
        assert all(pdf_fonts(pdf).values())
        assert pdf.open_metadata()["pdfaid:part"] == "2" and str(pdf.Root.OutputIntents[0].S) == "/GTS_PDFA1"
    text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(out).pages)
    assert "Zine table" in text and "sigma 2.00" in text and "1.9995" not in text
    assert f"#{pieces[12].id}" in text and f"#{pieces[13].id}" not in text  # the one not kept is left out
