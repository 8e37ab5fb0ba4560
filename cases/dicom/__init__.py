"""DICOM handling for ingestion, free of Django: reading and validating CT instances
(`reading`), safe zip expansion (`archive`) and de-identification (`deid`).

Every refusal is a `DicomInputError` naming the offending file and the reason, so that the
service layer (`cases/services/ingestion.py`) can report it unchanged to the browser, the API
and the command line.
"""

from __future__ import annotations


class DicomInputError(Exception):
    """Bad input: `filename` is the file (or archive member) at fault, `reason` says why."""

    def __init__(self, filename: str, reason: str) -> None:
        self.filename = str(filename)
        self.reason = reason
        super().__init__(f"{self.filename}: {reason}")
