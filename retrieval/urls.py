"""Pages of the retrieval app (model versions and evaluation reports)."""

from django.urls import path

from retrieval import views

app_name = "retrieval"

urlpatterns = [
    path("models/", views.model_list, name="model_list"),
    path("models/<int:pk>/", views.model_detail, name="model_detail"),
    path("models/<int:pk>/report/<path:name>", views.model_report_file, name="model_report_file"),
]
