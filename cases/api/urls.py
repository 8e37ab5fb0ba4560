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
    path(
        "reference-cases/<int:pk>/approve/",
        views.ReferenceCaseApproveView.as_view(),
        name="api-reference-case-approve",
    ),
    path(
        "reference-cases/<int:pk>/reject/",
        views.ReferenceCaseRejectView.as_view(),
        name="api-reference-case-reject",
    ),
    path(
        "reference-cases/<int:pk>/retire/",
        views.ReferenceCaseRetireView.as_view(),
        name="api-reference-case-retire",
    ),
    # Stored files, by the id of their row (cases/api/files.py).
    path("files/slices/<int:pk>.npy", files.SlicePixelsView.as_view(), name="api-file-slice-npy"),
    path("files/slices/<int:pk>.dcm", files.SliceDicomView.as_view(), name="api-file-slice-dcm"),
]
