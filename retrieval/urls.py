"""URLs of the retrieval app.

- `urlpatterns`: model versions and their reports (the `retrieval` namespace, under /retrieval/).
- `review_urlpatterns`: the review page of a study, its progress, Retry and CAM overlays; at the
  site root and in the `cases` namespace (`cases:study_review`, ...), next to the study page
  they extend (joined by ildreview/urls.py).
- `api_urlpatterns`: a study's results and CAM files under /api/ (ildreview/api_urls.py).
"""

from django.urls import path

from retrieval import api
from retrieval.views import model_versions, review

app_name = "retrieval"

urlpatterns = [
    path("models/", model_versions.model_list, name="model_list"),
    path("models/<int:pk>/", model_versions.model_detail, name="model_detail"),
    path(
        "models/<int:pk>/report/<path:name>",
        model_versions.model_report_file,
        name="model_report_file",
    ),
]

review_urlpatterns = [
    path("studies/<int:pk>/review/", review.study_review, name="study_review"),
    path("studies/<int:pk>/progress.json", review.study_progress, name="study_progress"),
    path("studies/<int:pk>/retry/", review.study_retry, name="study_retry"),
    path(
        "studies/<int:pk>/review/cam/<int:query_slice>-<int:reference_slice>-<slug:side>.png",
        review.review_cam,
        name="review_cam",
    ),
    path("studies/<int:pk>/review/events/", review.review_event, name="review_event"),
    path(
        "studies/<int:pk>/review/live.json",
        review.review_live_status,
        name="review_live_status",
    ),
]

api_urlpatterns = [
    path("studies/<int:pk>/results/", api.StudyResultsView.as_view(), name="api-study-results"),
    # A stored file by the id of its row, like the cases app's (cases/api/files.py).
    path(
        "files/similar-cases/<int:pk>/<slug:side>.png",
        api.SimilarCaseCamView.as_view(),
        name="api-file-similar-case-cam",
    ),
]
