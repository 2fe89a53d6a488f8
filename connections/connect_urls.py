"""The "Connect <platform> account" flows, mounted at /connect/ by adsync/urls.py: for each
provider with an OAuth sign-in, /connect/<slug>/start, callback and choose, named
"<slug>-connect-start" and so on (what Flow, the templates and connections.status reverse).
"""

from django.urls import URLPattern, path

from connections import connect
from syncing.providers import OAUTH_PROVIDERS


def _flow_urls(flow: connect.Flow) -> list[URLPattern]:
    provider = {"provider": flow.provider}
    return [
        path(f"{flow.provider}/start", connect.connect_start, provider, name=f"{flow.url_prefix}-start"),
        path(f"{flow.provider}/callback", connect.connect_callback, provider, name=f"{flow.url_prefix}-callback"),
        path(f"{flow.provider}/choose", connect.connect_choose, provider, name=f"{flow.url_prefix}-choose"),
    ]


urlpatterns = [url for slug in OAUTH_PROVIDERS for url in _flow_urls(connect.flow_for(slug))]
