"""REST API routes of the cases app (included at /api/ by ildreview/api_urls.py; the
retrieval app's results and CAM routes are `retrieval.urls.api_urlpatterns`)."""

from django.urls import path, register_converter

from cases.api import dicomweb, files, views

register_converter(dicomweb.DicomUidConverter, "dicomuid")
_DW = "dicomweb/studies/<dicomuid:study_uid>/series/<dicomuid:series_uid>"

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
    # A read-only DICOMweb subset, same visibility as the pages (cases/api/dicomweb.py).
    path("dicomweb/studies", dicomweb.StudiesView.as_view(), name="dicomweb-studies"),
    path(
        "dicomweb/studies/<dicomuid:study_uid>/series",
        dicomweb.StudySeriesView.as_view(),
        name="dicomweb-series",
    ),
    path(f"{_DW}/instances", dicomweb.SeriesInstancesView.as_view(), name="dicomweb-instances"),
    path(f"{_DW}/metadata", dicomweb.SeriesMetadataView.as_view(), name="dicomweb-series-meta"),
    path(
        f"{_DW}/instances/<dicomuid:instance_uid>/metadata",
        dicomweb.InstanceMetadataView.as_view(),
        name="dicomweb-instance-meta",
    ),
    path(
        f"{_DW}/instances/<dicomuid:instance_uid>",
        dicomweb.InstanceView.as_view(),
        name="dicomweb-instance",
    ),
    path(
        f"{_DW}/instances/<dicomuid:instance_uid>/frames/<int:frame>",
        dicomweb.FrameView.as_view(),
        name="dicomweb-frame",
    ),
]
