"""How the workers built the reference index is recorded on the model version and shown in its
admin: the tuned LSH parameters and measured recall, or the fallback and its reason."""

from __future__ import annotations

import pytest
from django.urls import reverse

from retrieval.engine.index import tune
from retrieval.engine.index.tune import TuneOptions, build_tuned_index
from retrieval.models import ModelVersion, ReferenceEmbedding
from retrieval.pipeline import index_store
from retrieval.pipeline.reference import reference_case_sync
from retrieval.pipeline.synthetic import synthetic_reference_create
from tests.factories import diagnosis
from tests.retrieval_tests.index_data import clustered
from tests.retrieval_tests.pipeline_fixtures import SIZE

pytestmark = pytest.mark.django_db


def test_the_model_version_admin_shows_the_tuned_lsh_parameters_and_recall(client, admin_user):
    ids, x, _ = clustered(2000, 1, spread=0.75)
    index = build_tuned_index("lsh", ids, x, options=TuneOptions(max_query_fraction=None))
    info = index.build_info
    version = ModelVersion.objects.create(
        name="tuned", artefact_dir="unused", backbone="b", index_info=info
    )
    client.force_login(admin_user)

    page = client.get(reverse("admin:retrieval_modelversion_change", args=[version.pk]))

    html = page.content.decode()
    assert page.status_code == 200
    assert f"lsh (tables {info['tables']}, bits {info['bits']}, probes {info['probes']})" in html
    assert f"{info['recall']} (target 0.95, {info['sample']} held-out library vectors)" in html


def test_a_sync_records_how_the_index_was_built_on_the_model_version(library, active_version):
    live = index_store.index_sync(model_version=active_version)

    active_version.refresh_from_db()
    info = active_version.index_info
    assert info["backend"] == live.index.backend == "exact"  # a handful of vectors
    assert info["n"] == len(live.meta) and "nothing to tune" in info["reason"]
    assert info["built_at"]


def test_the_index_is_re_tuned_once_the_library_has_doubled(
    library, active_version, experts, monkeypatch
):
    live = index_store.index_sync(model_version=active_version)
    before = live.index
    monkeypatch.setattr(tune, "MIN_TUNE_N", 1)
    before.build_info["n"] = 1  # as if tuned when the library held one vector
    rc = synthetic_reference_create(
        expert=experts[0],
        approver=experts[1],
        diagnosis=diagnosis("Other"),
        pattern="consolidation",
        slices=2,
        size=SIZE,
        seed=77,
    )
    reference_case_sync(reference_case_id=rc.pk)

    live = index_store.index_sync(model_version=active_version)

    assert live.index is not before
    n = ReferenceEmbedding.objects.filter(model_version=active_version).count()
    assert len(live.index) == n
    active_version.refresh_from_db()
    assert active_version.index_info["n"] == n and active_version.index_info["requested"] == "lsh"
