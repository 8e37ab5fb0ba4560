"""Top-level URL configuration."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpResponse
from django.urls import include, path

from ildreview.auth import LoginForm

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
    path("", include("cases.urls")),
    path("", include("cases.urls_review")),
]
