"""Fixtures of the retrieval tests (pipeline fixtures live in pipeline_fixtures.py)."""

from tests.retrieval_tests.pipeline_fixtures import (  # noqa: F401 (pytest fixtures)
    active_version,
    clinician,
    experts,
    library,
    pipeline_env,
    tiny_artefact,
)
