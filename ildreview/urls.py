"""Top-level URL configuration."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpResponse
from django.urls import include, path

from cases import urls as cases_urls
from ildreview.auth import LoginForm
from retrieval import urls as retrieval_urls

urlpatterns = [
    path("admin/", admin.site.urls),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(authentication_form=LoginForm),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", lambda request: HttpResponse("ok"), name="healthz"),
    path("api/", include("ildreview.api_urls")),
    path("retrieval/", include("retrieval.urls")),
    # One `cases` namespace for the study pages and the review pages the retrieval app adds to
    # them (their names, `cases:study_review` etc., are used across templates and scripts).
    path(
        "",
        include((cases_urls.urlpatterns + retrieval_urls.review_urlpatterns, cases_urls.app_name)),
    ),
    path("", include("cases.urls_review")),
]
