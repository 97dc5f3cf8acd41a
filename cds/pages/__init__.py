"""Pages a person reads: rule documentation, the card preview and its trend charts.

Plain Python (no Flask): cds.http.pages serves them, cds.cli.main writes the preview file.
"""
