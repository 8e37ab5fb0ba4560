"""Expert review actions and the approval queue (included at the site root)."""

from django.urls import path

from cases.views import review_actions

app_name = "review"

urlpatterns = [
    path("studies/<int:pk>/label/", review_actions.label_set, name="label_set"),
    path("studies/<int:pk>/propose/", review_actions.reference_propose, name="propose"),
    path("approvals/", review_actions.approval_queue, name="approvals"),
    path(
        "references/<int:pk>/approve/", review_actions.reference_approve, name="reference_approve"
    ),
    path("references/<int:pk>/reject/", review_actions.reference_reject, name="reference_reject"),
    path("references/<int:pk>/retire/", review_actions.reference_retire, name="reference_retire"),
]
