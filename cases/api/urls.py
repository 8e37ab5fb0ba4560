"""REST API routes of the cases app (included at /api/ by ildreview/api_urls.py; the
retrieval app's results and CAM routes are `retrieval.urls.api_urlpatterns`)."""

from django.urls import path

from cases.api import files, views

urlpatterns = [
    path("auth/token/", views.TokenObtainView.as_view(), name="api-token"),
    path("diagnoses/", views.DiagnosisListView.as_view(), name="api-diagnosis-list"),
    path("studies/", views.StudyListView.as_view(), name="api-study-list"),
    path("studies/<int:pk>/", views.StudyDetailView.as_view(), name="api-study-detail"),
    path("studies/<int:pk>/labels/", views.StudyLabelsView.as_view(), name="api-study-labels"),
    path("reference-cases/", views.ReferenceCaseListView.as_view(), name="api-reference-case-list"),
    path(
        "reference-cases/<int:pk>/",
        views.ReferenceCaseDetailView.as_view(),
        name="api-reference-case-detail",
    ),
    *[
        path(
            f"reference-cases/<int:pk>/{action}/",
            view.as_view(),
            name=f"api-reference-case-{action}",
        )
        for action, view in (
            ("approve", views.ReferenceCaseApproveView),
            ("reject", views.ReferenceCaseRejectView),
            ("retire", views.ReferenceCaseRetireView),
        )
    ],
    # Stored files, by the id of their row (cases/api/files.py).
    path("files/slices/<int:pk>.npy", files.SlicePixelsView.as_view(), name="api-file-slice-npy"),
    path("files/slices/<int:pk>.dcm", files.SliceDicomView.as_view(), name="api-file-slice-dcm"),
]
