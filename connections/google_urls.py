"""The "Connect Google Ads account" flow, mounted at /connect/google/ by adsync/urls.py.

connections.status.RECONNECT_URLS names the start path: keep the two in step.
"""

from django.urls import path

from connections import google_connect

urlpatterns = [
    path("start", google_connect.google_connect_start, name="google-connect-start"),
    path("callback", google_connect.google_connect_callback, name="google-connect-callback"),
    path("choose", google_connect.google_connect_choose, name="google-connect-choose"),
]
