"""Pages of the cases app (the `cases` namespace; ildreview/urls.py adds the retrieval app's
review pages, `retrieval.urls.review_urlpatterns`, to it)."""

from django.urls import path

from cases.views import pages, slices

app_name = "cases"

urlpatterns = [
    path("", pages.worklist, name="worklist"),
    path("upload/", pages.upload, name="upload"),
    path("studies/<int:pk>/", pages.study_detail, name="study_detail"),
    path("slices/<int:pk>.png", slices.slice_png, name="slice_png"),
    path("library/", pages.library, name="library"),
]
