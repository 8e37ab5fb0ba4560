"""Fixtures of the retrieval tests (pipeline fixtures live in pipeline_fixtures.py)."""

import pytest

from tests.retrieval_tests.pipeline_fixtures import (  # noqa: F401 (pytest fixtures)
    active_version,
    experts,
    library,
    pipeline_env,
    tiny_artefact,
)


@pytest.fixture(autouse=True)
def _fresh_process_caches(settings, tmp_path):
    """Each test starts with no in-process index or model and its own index snapshot folder:
    both are keyed by database ids, and ids come back after a test's transaction is rolled
    back, so a cache from an earlier test could otherwise answer for this test's rows."""
    from retrieval.pipeline.index_store import index_forget
    from retrieval.pipeline.runtime import model_cache_clear

    settings.VAR_DIR = tmp_path / "var"
    index_forget()
    model_cache_clear()
    yield
    index_forget()
    model_cache_clear()


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test: small tensors on 2 shared cores run many times
    slower with torch's thread pool (OpenMP spinning). Modules that run models opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
