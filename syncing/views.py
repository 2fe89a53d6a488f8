"""Operations endpoints: liveness, readiness and Prometheus metrics. No sign-in: probes and
scrapers have none; /metrics is off unless a token or an allow-list is configured."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from syncing.health import Component, readiness
from syncing.metrics import metrics_registry


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: this process answers. Touches nothing else (see syncing.health)."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when the database, the broker, the scheduler and a sync worker are all
    there, else 503 with the reasons. `?check=database,broker` asks about some of them only."""
    wanted = tuple(filter(None, request.GET.get("check", "").split(","))) or Component.ALL
    unknown = sorted(set(wanted) - set(Component.ALL))
    if unknown:
        return JsonResponse(
            {"detail": f"Unknown check {', '.join(unknown)}; choose from {', '.join(Component.ALL)}."}, status=400
        )
    state = readiness(now=timezone.now(), components=wanted)
    return JsonResponse(state.as_json(), status=200 if state.ready else 503)


def _may_scrape(request: HttpRequest) -> bool:
    if settings.METRICS_TOKEN:
        sent = request.headers.get("Authorization", "")
        if hmac.compare_digest(sent.encode(), f"Bearer {settings.METRICS_TOKEN}".encode()):
            return True
    if settings.METRICS_ALLOWED_IPS:
        # REMOTE_ADDR, not X-Forwarded-For: a client can write that header itself.
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", "0.0.0.0"))
        return any(address in ipaddress.ip_network(net, strict=False) for net in settings.METRICS_ALLOWED_IPS)
    return False


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics. Off (404) unless METRICS_TOKEN or METRICS_ALLOWED_IPS is set; a
    scraper that is neither gets 404 too, so the endpoint does not advertise itself."""
    if not (settings.METRICS_TOKEN or settings.METRICS_ALLOWED_IPS) or not _may_scrape(request):
        raise Http404
    body = generate_latest(metrics_registry(now=timezone.now()))
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
