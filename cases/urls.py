"""Pages of the cases app."""

from django.urls import path

from cases.views import pages, review_page, slices

app_name = "cases"

urlpatterns = [
    path("", pages.worklist, name="worklist"),
    path("upload/", pages.upload, name="upload"),
    path("studies/<int:pk>/", pages.study_detail, name="study_detail"),
    path("slices/<int:pk>.png", slices.slice_png, name="slice_png"),
    path("library/", pages.library, name="library"),
    # The review page (cases/views/review_page.py).
    path("studies/<int:pk>/review/", review_page.study_review, name="study_review"),
    path("studies/<int:pk>/progress.json", review_page.study_progress, name="study_progress"),
    path("studies/<int:pk>/retry/", review_page.study_retry, name="study_retry"),
    path(
        "studies/<int:pk>/review/cam/<int:query_slice>-<int:reference_slice>-<slug:side>.png",
        review_page.review_cam,
        name="review_cam",
    ),
]
