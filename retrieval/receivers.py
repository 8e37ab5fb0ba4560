"""Receivers of the cases app's signals (`cases.signals`), connected in `RetrievalConfig.ready`:
an imported study is queued for processing, a change to the approved library is synchronised
into the retrieval index."""

from __future__ import annotations

from typing import Any


def study_imported_enqueue(sender: Any, *, study: Any, **kwargs: Any) -> None:
    """Queue the study in the sender's transaction (its job commits with the import)."""
    from retrieval.pipeline.enqueue import study_enqueue_processing

    study_enqueue_processing(study=study)


def reference_library_changed_sync(sender: Any, *, reference_case_id: int, **kwargs: Any) -> None:
    """Ask a worker to add (approved) or remove (retired) the case in the retrieval index.

    Imported here, not at module level: the task module pulls in the ML engine, which page and
    API processes should not load just to write a label.
    """
    from retrieval.tasks import reference_case_sync

    reference_case_sync.delay(reference_case_id)
