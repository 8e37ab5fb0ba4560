"""Fixtures shared by the pipeline tests: a tiny trained model (random-init backbone, 64 px,
head trained 1 epoch on synthetic slices; built once per session) and a small approved
reference library embedded into the index."""

from __future__ import annotations

import shutil

import pytest

from retrieval.models import ModelVersion
from retrieval.pipeline import index_store, runtime
from retrieval.pipeline.synthetic import chest_slice
from tests.factories import diagnosis

SIZE = 64
LIBRARY = {"Normal": "normal", "IPF-ILD": "reticulation", "ASS-ILD": "ground_glass"}


@pytest.fixture(scope="session")
def tiny_artefact(tmp_path_factory):
    from retrieval.engine.preprocess import prepare_slice
    from retrieval.pipeline.bootstrap import artefact_train

    prepared, labels = [], []
    codes = sorted(LIBRARY.values())
    for label, pattern in enumerate(codes):
        for seed in range(3):
            hu = chest_slice(size=SIZE, pattern=pattern, seed=seed)
            prepared.append(prepare_slice(hu, is_windowed=False, size=SIZE))
            labels.append(label)
    out = tmp_path_factory.mktemp("tiny-model")
    return artefact_train(
        prepared=prepared,
        labels=labels,
        class_names=codes,
        out_dir=out,
        backbone_name="efficientnet_lite0",
        weights="random",
        size=SIZE,
        epochs=1,
    )


@pytest.fixture
def pipeline_env(settings, tmp_path):
    """Per-test VAR_DIR (index snapshots) and clean per-process caches."""
    settings.VAR_DIR = tmp_path / "var"
    settings.ILDREVIEW_MIN_LUNG_FRACTION = 0.05
    settings.ILDREVIEW_RESULTS_TOP_K = 2
    index_store.index_forget()
    yield settings
    index_store.index_forget()
    shutil.rmtree(tmp_path / "var", ignore_errors=True)


@pytest.fixture
def active_version(db, tiny_artefact, pipeline_env) -> ModelVersion:
    return ModelVersion.objects.create(
        name="tiny",
        artefact_dir=str(tiny_artefact),
        backbone="efficientnet_lite0",
        is_active=True,
    )


@pytest.fixture
def experts(expert, second_expert):
    return expert, second_expert


# Embeddings of the library's slices computed by the real path (reference_case_sync) in the
# first test that needs them, reused by later tests: the library is deterministic (same
# synthetic slices, same tiny artefact), and re-embedding it per test costs seconds.
_LIBRARY_ROWS: dict[tuple[int, int, int], tuple[bytes, float, bytes, dict]] = {}


@pytest.fixture
def library(active_version, experts):
    """Approved, embedded reference cases: two per diagnosis of LIBRARY, two slices each."""
    from retrieval.models import ReferenceEmbedding, SliceFeatures
    from retrieval.pipeline.reference import reference_case_sync
    from retrieval.pipeline.synthetic import synthetic_reference_create

    cases = []
    for n, (name, pattern) in enumerate(LIBRARY.items()):
        for j in range(2):
            rc = synthetic_reference_create(
                expert=experts[0],
                approver=experts[1],
                diagnosis=diagnosis(name),
                pattern=pattern,
                slices=2,
                size=SIZE,
                seed=50 + 10 * n + j,
            )
            slices = list(rc.study.series.get().slices.order_by("index"))
            if all((n, j, s.index) in _LIBRARY_ROWS for s in slices):
                for s in slices:
                    vec, fraction, rad, main = _LIBRARY_ROWS[(n, j, s.index)]
                    SliceFeatures.objects.create(
                        slice=s,
                        model_version=active_version,
                        lung_fraction=fraction,
                        usable=True,
                        radiomics=rad,
                        radiomics_main=main,
                    )
                    ReferenceEmbedding.objects.create(
                        model_version=active_version,
                        reference_case=rc,
                        slice=s,
                        vector=vec,
                        lung_fraction=fraction,
                    )
            else:
                reference_case_sync(reference_case_id=rc.pk)
                for s in slices:
                    e = ReferenceEmbedding.objects.get(slice=s, model_version=active_version)
                    f = SliceFeatures.objects.get(slice=s, model_version=active_version)
                    _LIBRARY_ROWS[(n, j, s.index)] = (
                        bytes(e.vector),
                        e.lung_fraction,
                        bytes(f.radiomics),
                        f.radiomics_main,
                    )
            cases.append(rc)
    return cases


__all__ = [
    "SIZE",
    "active_version",
    "experts",
    "library",
    "pipeline_env",
    "tiny_artefact",
    "runtime",
]
