"""Exporters from finished pieces: AR texture packs, print PDFs, GLB for web AR, QR codes."""
