"""Pages of the retrieval app (model versions and evaluation reports)."""

app_name = "retrieval"

urlpatterns: list = []
