"""The live reference index: incremental sync from ReferenceEmbedding, snapshots."""

from __future__ import annotations

import numpy as np
import pytest
from django.utils import timezone

from cases.models import ReferenceCase
from retrieval.models import ReferenceEmbedding
from retrieval.pipeline import index_store
from retrieval.pipeline.reference import reference_case_sync
from retrieval.pipeline.runtime import vector_from_bytes
from retrieval.pipeline.synthetic import synthetic_reference_create
from tests.factories import diagnosis
from tests.retrieval_tests.pipeline_fixtures import SIZE

pytestmark = pytest.mark.django_db


def _query_cases(version, vector, k=10):
    result, _meta = index_store.index_query(
        model_version=version, query_vectors=vector[None, :], k_cases=k
    )
    return [c.case_id for c in result.cases]


def test_a_newly_approved_case_is_found_by_the_next_query_without_a_rebuild(
    library, active_version, experts
):
    live = index_store.index_sync(model_version=active_version)
    index_before = live.index
    n_before = len(live.meta)
    rc = synthetic_reference_create(
        expert=experts[0],
        approver=experts[1],
        diagnosis=diagnosis("Other"),
        pattern="consolidation",
        slices=2,
        size=SIZE,
        seed=999,
    )
    reference_case_sync(reference_case_id=rc.pk)
    row = ReferenceEmbedding.objects.filter(reference_case=rc).first()

    found = _query_cases(active_version, vector_from_bytes(row.vector))

    assert found[0] == rc.pk
    live = index_store.index_sync(model_version=active_version)
    assert live.index is index_before  # same object, vectors added in place
    assert len(live.meta) == n_before + ReferenceEmbedding.objects.filter(reference_case=rc).count()


def test_a_retired_case_disappears_from_the_next_query(library, active_version):
    rc = library[0]
    vector = vector_from_bytes(ReferenceEmbedding.objects.filter(reference_case=rc).first().vector)
    assert rc.pk in _query_cases(active_version, vector)

    ReferenceCase.objects.filter(pk=rc.pk).update(
        state=ReferenceCase.State.RETIRED, retired_at=timezone.now()
    )
    reference_case_sync(reference_case_id=rc.pk)

    assert not ReferenceEmbedding.objects.filter(reference_case=rc).exists()
    assert rc.pk not in _query_cases(active_version, vector)


def test_a_restarted_worker_starts_from_the_snapshot_and_catches_up(
    library, active_version, experts
):
    index_store.index_sync(model_version=active_version)
    snapshot = index_store.index_dir(model_version_id=active_version.pk)
    assert (snapshot / "CURRENT").exists()
    # Changes while "this worker" is down: one case retired, one approved.
    retired = library[1]
    ReferenceCase.objects.filter(pk=retired.pk).update(state=ReferenceCase.State.RETIRED)
    reference_case_sync(reference_case_id=retired.pk)
    new = synthetic_reference_create(
        expert=experts[0],
        approver=experts[1],
        diagnosis=diagnosis("Other"),
        pattern="consolidation",
        slices=2,
        size=SIZE,
        seed=321,
    )
    reference_case_sync(reference_case_id=new.pk)
    index_store.index_forget()  # a new process: nothing in memory

    live = index_store.index_sync(model_version=active_version)

    db_ids = set(
        ReferenceEmbedding.objects.filter(model_version=active_version).values_list("id", flat=True)
    )
    assert set(live.meta) == db_ids
    assert {m[0] for m in live.meta.values()} >= {new.pk}
    assert retired.pk not in {m[0] for m in live.meta.values()}


def test_an_empty_library_answers_with_no_cases(active_version):
    result, _ = index_store.index_query(
        model_version=active_version, query_vectors=np.ones((1, 128), np.float32), k_cases=5
    )
    assert result.cases == []


def test_a_diagnosis_filter_still_returns_k_cases_of_that_diagnosis(library, active_version):
    vector = vector_from_bytes(ReferenceEmbedding.objects.first().vector)
    code = diagnosis("IPF-ILD").code
    result, _ = index_store.index_query(
        model_version=active_version, query_vectors=vector[None, :], k_cases=2, label_filter=code
    )
    assert len(result.cases) == 2
    assert {c.label for c in result.cases} == {code}
