"""REST API URL configuration (all endpoints require authentication)."""

from csp.decorators import csp_update
from django.urls import include, path, re_path
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from cases.api.views import ApiNotFoundView
from retrieval import urls as retrieval_urls


@extend_schema(exclude=True)
class SchemaView(SpectacularAPIView):
    """The schema itself: served, but not an operation of the API it describes."""


# Swagger UI under the site's Content-Security-Policy: the split view loads its start-up script
# from a URL instead of inline; the UI itself still injects styles and data: icons.
api_docs = csp_update({"style-src": ["'unsafe-inline'"], "img-src": ["data:"]})(
    SpectacularSwaggerSplitView.as_view(url_name="api-schema")
)

urlpatterns = [
    path("schema/", SchemaView.as_view(), name="api-schema"),
    path("docs/", api_docs, name="api-docs"),
    path("", include("cases.api.urls")),
    path("", include(retrieval_urls.api_urlpatterns)),
    # Last: whatever no route above matches gets a JSON 404.
    re_path(r"^", ApiNotFoundView.as_view(), name="api-not-found"),
]
