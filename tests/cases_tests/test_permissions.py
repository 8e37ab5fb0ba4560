"""Roles and the study visibility rules shared by pages and the API."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.http import Http404

from cases import permissions, selectors
from cases.models import ReferenceCase, Study
from tests.factories import (
    ExpertLabelFactory,
    ReferenceCaseFactory,
    SliceFactory,
    StudyFactory,
    UserFactory,
    diagnosis,
)

pytestmark = pytest.mark.django_db


def test_user_role_names_each_group_and_none_for_others(clinician, expert, admin_user):
    assert selectors.user_role(user=clinician) == "clinician"
    assert selectors.user_role(user=expert) == "expert"
    assert selectors.user_role(user=admin_user) == "admin"
    assert selectors.user_role(user=UserFactory()) is None
    assert selectors.user_role(user=AnonymousUser()) is None


def test_staff_without_group_is_admin_but_not_expert():
    staff = UserFactory(is_staff=True)
    assert permissions.is_admin(staff)
    assert not permissions.is_expert(staff)


def test_inactive_expert_has_no_role():
    user = UserFactory(role="Expert", is_active=False)
    assert not permissions.is_expert(user)
    assert permissions.user_role(user) is None


def test_clinicians_and_experts_may_upload_but_users_without_role_may_not(clinician, expert):
    assert permissions.can_upload(clinician)
    assert permissions.can_upload(expert)
    assert not permissions.can_upload(UserFactory())
    assert not permissions.can_upload(AnonymousUser())


def test_clinician_sees_own_study_only(clinician, other_clinician):
    own = StudyFactory(uploaded_by=clinician)
    other = StudyFactory(uploaded_by=other_clinician)
    assert permissions.can_view_study(clinician, own)
    assert not permissions.can_view_study(clinician, other)
    assert not permissions.can_view_study(AnonymousUser(), own)


def test_experts_and_admins_see_every_study(clinician, expert, admin_user):
    study = StudyFactory(uploaded_by=clinician)
    assert permissions.can_view_study(expert, study)
    assert permissions.can_view_study(admin_user, study)


@pytest.mark.parametrize(
    ("state", "visible"),
    [
        (ReferenceCase.State.APPROVED, True),
        (ReferenceCase.State.PROPOSED, False),
        (ReferenceCase.State.REJECTED, False),
        (ReferenceCase.State.RETIRED, False),
    ],
)
def test_clinician_sees_other_study_only_when_it_is_an_approved_reference(
    clinician, other_clinician, state, visible
):
    study = StudyFactory(uploaded_by=other_clinician)
    ReferenceCaseFactory(study=study, state=state)
    assert permissions.can_view_study(clinician, study) is visible


def test_study_list_visible_filters_to_own_studies_for_clinicians(
    clinician, other_clinician, expert
):
    own = StudyFactory(uploaded_by=clinician)
    other = StudyFactory(uploaded_by=other_clinician)
    # An approved reference of someone else is in the library, not in the worklist.
    ReferenceCaseFactory(study=other, state=ReferenceCase.State.APPROVED)
    assert list(selectors.study_list_visible(user=clinician)) == [own]
    assert set(selectors.study_list_visible(user=expert)) == {own, other}
    assert not selectors.study_list_visible(user=AnonymousUser()).exists()


def test_study_list_visible_filters_by_status_and_text(expert):
    ready = StudyFactory(status=Study.Status.READY_FOR_REVIEW, description="HRCT follow-up")
    StudyFactory(status=Study.Status.UPLOADED, description="CT chest")
    assert list(selectors.study_list_visible(user=expert, status="ready_for_review")) == [ready]
    assert list(selectors.study_list_visible(user=expert, q="follow")) == [ready]
    assert list(selectors.study_list_visible(user=expert, q=ready.patient.display_id)) == [ready]


def test_study_list_visible_filters_by_current_diagnosis_not_an_older_one(expert):
    relabelled = StudyFactory()
    ExpertLabelFactory(study=relabelled, diagnosis=diagnosis("IPF-ILD"))
    ExpertLabelFactory(study=relabelled, diagnosis=diagnosis("ASS-ILD"))
    ipf = StudyFactory()
    ExpertLabelFactory(study=ipf, diagnosis=diagnosis("IPF-ILD"))
    StudyFactory()  # unlabelled

    assert list(selectors.study_list_visible(user=expert, diagnosis="ipf-ild")) == [ipf]
    assert list(selectors.study_list_visible(user=expert, diagnosis=diagnosis("ASS-ILD"))) == [
        relabelled
    ]
    annotated = selectors.study_list_with_current_label(
        studies=selectors.study_list_visible(user=expert, diagnosis="ass-ild")
    )
    assert annotated.get().current_label_name == "ASS-ILD"


def test_study_get_visible_raises_404_for_other_clinicians_study(clinician, other_clinician):
    other = StudyFactory(uploaded_by=other_clinician)
    with pytest.raises(Http404):
        selectors.study_get_visible(user=clinician, pk=other.pk)
    with pytest.raises(Http404):
        selectors.study_get_visible(user=clinician, pk=other.pk + 1000)
    assert selectors.study_get_visible(user=other_clinician, pk=other.pk) == other


def test_slice_get_visible_follows_the_study_rule(clinician, other_clinician):
    slice_ = SliceFactory(series__study__uploaded_by=other_clinician)
    with pytest.raises(Http404):
        selectors.slice_get_visible(user=clinician, pk=slice_.pk)
    assert selectors.slice_get_visible(user=other_clinician, pk=slice_.pk) == slice_


def test_reference_library_lists_approved_cases_only(other_clinician):
    approved = ReferenceCaseFactory(state=ReferenceCase.State.APPROVED)
    ReferenceCaseFactory(state=ReferenceCase.State.PROPOSED)
    ReferenceCaseFactory(state=ReferenceCase.State.RETIRED)
    ipf = ReferenceCaseFactory(state=ReferenceCase.State.APPROVED, diagnosis=diagnosis("IPF-ILD"))
    assert set(selectors.reference_library_list()) == {approved, ipf}
    assert list(selectors.reference_library_list(diagnosis="ipf-ild")) == [ipf]


def test_thumbnail_is_the_middle_slice_of_the_first_series():
    first = SliceFactory(index=0).series
    for index in (1, 2, 3, 4):
        SliceFactory(series=first, index=index)
    assert selectors.study_thumbnail_slice(study=first.study).index == 2
    assert selectors.study_thumbnail_slice(study=StudyFactory()) is None
