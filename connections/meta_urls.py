"""Connecting Meta ad accounts (mounted at /connect/meta/)."""

from django.urls import path

from connections import meta_connect

urlpatterns = [
    path("", meta_connect.meta_connect_start, name="meta-connect-start"),
    path("callback", meta_connect.meta_connect_callback, name="meta-connect-callback"),
    path("choose", meta_connect.meta_connect_choose, name="meta-connect-choose"),
]
