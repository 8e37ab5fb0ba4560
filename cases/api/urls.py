"""REST API routes of the cases app."""

urlpatterns: list = []
