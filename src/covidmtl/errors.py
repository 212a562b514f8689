"""Errors that tell a researcher which subject, file and stage failed and what to do."""

from __future__ import annotations

from pathlib import Path


class PipelineInputError(Exception):
    """Bad input data: names the stage, the subject and the file, and says what to do.

    The CLI prints the message and exits with status 1 so that Snakemake marks only
    this subject's job as failed; with ``--keep-going`` the rest of the cohort completes.
    """

    def __init__(
        self,
        stage: str,
        reason: str,
        subject: str | None = None,
        path: str | Path | None = None,
        hint: str | None = None,
    ) -> None:
        self.stage = stage
        self.subject = subject
        self.path = str(path) if path is not None else None
        self.reason = reason
        self.hint = hint or (
            "fix or replace the file, or add the subject to `exclude_subjects` in the config "
            "and rerun; other subjects are not affected (use snakemake --keep-going)"
        )
        super().__init__(self.format())

    def format(self) -> str:
        where = [f"stage={self.stage}"]
        if self.subject:
            where.append(f"subject={self.subject}")
        if self.path:
            where.append(f"file={self.path}")
        return f"[{' '.join(where)}] {self.reason}. What to do: {self.hint}."
