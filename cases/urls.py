"""Pages of the cases app."""

from django.urls import path

from cases.views import pages

app_name = "cases"

urlpatterns = [
    path("", pages.worklist, name="worklist"),
]
