"""The "Connect Meta account" flow, mounted at /connect/meta/ by adsync/urls.py.

connections.status.RECONNECT_URLS names the start path: keep the two in step.
"""

from django.urls import path

from connections import meta_connect

urlpatterns = [
    path("start", meta_connect.meta_connect_start, name="meta-connect-start"),
    path("callback", meta_connect.meta_connect_callback, name="meta-connect-callback"),
    path("choose", meta_connect.meta_connect_choose, name="meta-connect-choose"),
]
