from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.shortcuts import redirect
from django.urls import path


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("", lambda request: redirect("admin:connections_connection_changelist")),
    path("admin/", admin.site.urls),
    path("healthz", healthz),
]
