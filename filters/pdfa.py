"""Finishing a PDF as PDF/A-2b with an sRGB output intent.

reportlab draws the pages; pikepdf then adds what an archive-grade print file needs:

* an ``/OutputIntents`` entry (``GTS_PDFA1``) carrying the sRGB ICC profile, so every
  DeviceRGB colour in the file has a defined meaning;
* XMP metadata in the catalog, with ``pdfaid:part`` 2 / ``pdfaid:conformance`` B and
  title, author, subject, keywords and dates kept in step with the Info dictionary;
* real creation and modification dates (with the time zone) and a fresh ``/ID``.

PDF/X-4 would be the print-trade choice, but it asks for an *output* (printer)
profile; sRGB is a display profile, which PDF/A allows.  Page boxes (TrimBox,
BleedBox) are kept, so print shops see the trim either way.
"""
from __future__ import annotations

import io
import zlib
from datetime import datetime, timezone
from filters.common import srgb_icc

SRGB_CONDITION = "sRGB IEC61966-2.1"


def pdf_date(when: datetime) -> str:
    """``D:YYYYMMDDHHmmSS+HH'mm'`` as PDF dates are written."""
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    off = when.utcoffset()
    minutes = int(off.total_seconds() // 60) if off else 0
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return when.strftime("D:%Y%m%d%H%M%S") + f"{sign}{minutes // 60:02d}'{minutes % 60:02d}'"


def finish_pdfa(data: bytes, *, title: str, author: str = "", subject: str = "", keywords: str = "",
                creator: str = "kiosk filters", created: datetime | None = None) -> bytes:
    """``data`` (a PDF) rewritten as PDF/A-2b with the sRGB output intent and real dates."""
    import pikepdf

    created = created or datetime.now(timezone.utc)
    with pikepdf.open(io.BytesIO(data)) as pdf:
        icc = pikepdf.Stream(pdf, zlib.compress(srgb_icc()))
        icc["/Filter"] = pikepdf.Name.FlateDecode
        icc["/N"] = 3
        icc["/Alternate"] = pikepdf.Name.DeviceRGB
        pdf.Root["/OutputIntents"] = pikepdf.Array([pikepdf.Dictionary(
            Type=pikepdf.Name.OutputIntent,
            S=pikepdf.Name.GTS_PDFA1,
            OutputConditionIdentifier=pikepdf.String(SRGB_CONDITION),
            Info=pikepdf.String(SRGB_CONDITION),
            RegistryName=pikepdf.String("http://www.color.org"),
            DestOutputProfile=icc,
        )])
        info = pdf.docinfo
        for key, value in (("/Title", title), ("/Author", author), ("/Subject", subject),
                           ("/Keywords", keywords), ("/Creator", creator)):
            if value:
                info[key] = pikepdf.String(value)
            elif key in info:
                del info[key]
        if "/Trapped" in info:
            del info["/Trapped"]  # no XMP equivalent in pikepdf's mapping; PDF/A wants Info and XMP to agree
        info["/Producer"] = pikepdf.String(f"reportlab + pikepdf {pikepdf.__version__}")
        info["/CreationDate"] = info["/ModDate"] = pikepdf.String(pdf_date(created))
        with pdf.open_metadata(set_pikepdf_as_editor=False, update_docinfo=False) as meta:
            meta.load_from_docinfo(info)
            meta["pdfaid:part"] = "2"
            meta["pdfaid:conformance"] = "B"
            meta["xmp:CreateDate"] = meta["xmp:ModifyDate"] = meta["xmp:MetadataDate"] = created.isoformat()
        out = io.BytesIO()
        # Streams are copied as they are: reportlab already compressed the pages and the picture,
        # and qpdf's compress_streams pass costs 1 s or more on a 300 dpi print for nothing. The
        # XMP metadata stays uncompressed, as PDF/A readers expect. ICC v4 needs PDF 1.7.
        pdf.save(out, fix_metadata_version=False, static_id=False, min_version="1.7",
                 compress_streams=False, stream_decode_level=pikepdf.StreamDecodeLevel.none)
    return out.getvalue()

