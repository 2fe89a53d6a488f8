"""What Meta and the facebook-business SDK raise, as provider errors (syncing/providers/meta/errors.py),
and the answers the metered client refuses before the SDK reads them (client.py): reconnect,
permanent, transient and throttled, each with a short message and never the token.

The real facebook-business SDK over the wire to a fake Graph API on 127.0.0.1 (see
tests/meta_provider_fixtures.py). Syncs go through the real runner, state machine, budget and
dispatcher; only the network edge (the Graph API) is fake.
"""

from datetime import date, timedelta

import pytest
import time_machine
from django.db.models import Sum
from facebook_business.adobjects.adaccount import AdAccount
from facebook_business.exceptions import FacebookBadParameterError

from connections.models import SyncFrequency
from syncing.meter import CallMeter
from syncing.models import ApiCallBucket, DailyMetric, SyncRun
from syncing.providers.base import ThrottledError, TransientProviderError
from syncing.providers.meta import RECONNECT_MESSAGE, MetaProvider
from syncing.services import connection_enqueue_sync
from syncing.tasks import sync_connection
from tests.fakes.graph import Answer, graph_error, html_502, html_page, insight
from tests.meta_provider_fixtures import ACCOUNT, NOW, TOKEN, calls_counted, last_run, restated, sync, two_days
from tests.meta_provider_fixtures import graph_fixture as graph_fixture  # a fixture: pytest finds it by name
from tests.meta_provider_fixtures import meta_fixture as meta_fixture  # a fixture: pytest finds it by name

# --- errors -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_expired_token_is_an_error_asking_to_reconnect(graph, meta):
    connection = restated(meta(credentials={"access_token": "EAAexpired-token"}))

    assert sync(connection) == "error"

    assert (connection.sync_status, connection.last_sync_error, connection.last_sync_error_kind) == (
        "error",
        RECONNECT_MESSAGE,
        "auth",
    )
    assert RECONNECT_MESSAGE == "Meta access expired — reconnect the account"
    assert len(graph.insights_requests(ACCOUNT)) == 1


@pytest.mark.django_db
def test_missing_token_asks_to_reconnect_without_calling_meta(graph, meta):
    connection = restated(meta(credentials={}))

    sync(connection)

    assert (connection.sync_status, connection.last_sync_error) == ("error", RECONNECT_MESSAGE)
    assert graph.requests == []


@pytest.mark.django_db
def test_permission_error_asks_to_reconnect_with_metas_message(graph, meta):
    graph.script(graph_error(200, "(#200) Requires ads_read permission", error_type="OAuthException", status=403))
    connection = restated(meta())

    sync(connection)

    assert (connection.sync_status, connection.last_sync_error_kind) == ("error", "auth")
    # Meta's own "(#200) " prefix is not repeated.
    assert connection.last_sync_error == (
        "Meta denied access to this ad account (#200): Requires ads_read permission — reconnect the account"
    )


@pytest.mark.django_db
def test_other_errors_show_metas_message(graph, meta):
    graph.script(graph_error(100, "(#100) Tried accessing nonexisting field (foo)", error_type="OAuthException"))
    connection = restated(meta())

    sync(connection)

    assert (connection.sync_status, connection.last_sync_error_kind) == ("error", "permanent")
    assert connection.last_sync_error == "Meta rejected the request (#100): Tried accessing nonexisting field (foo)"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"campaign_id": ""}, "campaign_id missing on 2026-11-27"),
        ({"date_start": "2026-11-27x"}, 'date_start "2026-11-27x" for campaign c2 (not a date)'),
        ({"spend": "12,50"}, 'spend "12,50" for campaign c2 on 2026-11-27 (not a number)'),
        (
            {"actions": [{"action_type": "omni_purchase", "value": "lots"}]},
            'actions.omni_purchase "lots" for campaign c2 on 2026-11-27 (not a number)',
        ),
    ],
    ids=["no-campaign-id", "bad-date", "bad-spend", "bad-conversions"],
)
def test_an_unexpected_insights_row_is_a_permanent_error(graph, meta, fields, message):
    # (Every shape, and that nothing is half-written, in tests/test_malformed_data.py.)
    graph.insights[ACCOUNT] = [insight("c1", "2026-11-28"), insight("c2", "2026-11-27", **fields)]
    connection = restated(meta())

    assert sync(connection) == "error"

    assert (connection.last_sync_error_kind, connection.last_sync_error) == (
        "permanent",
        f"Meta sent a value AdSync cannot read: {message}",
    )
    assert DailyMetric.objects.filter(connection=connection).count() == 0


@pytest.mark.django_db
def test_a_request_the_sdk_cannot_build_is_permanent(graph, meta, settings):
    settings.META_API_VERSION = "26.0"  # past the settings check, which would refuse it at startup
    connection = restated(meta())

    assert sync(connection) == "error"

    assert (connection.last_sync_error_kind, connection.last_sync_error) == (
        "permanent",
        "Meta request could not be built: Please provide the API version in the following format: v26.0",
    )
    assert graph.requests == []


@pytest.mark.django_db
def test_an_sdk_parameter_error_is_permanent_and_never_shows_the_token(graph, meta, monkeypatch):
    def refuse(self, fields=None, params=None, **kwargs):
        raise FacebookBadParameterError(
            f"Bad value in {{'access_token': '{TOKEN}', 'level': 'x'}} ?access_token={TOKEN}"
        )

    monkeypatch.setattr(AdAccount, "get_insights", refuse)
    connection = restated(meta())

    assert sync(connection) == "error"

    assert connection.last_sync_error_kind == "permanent"
    assert connection.last_sync_error == (
        "Meta request could not be built: Bad value in {'access_token': '[redacted]', 'level': 'x'} "
        "?access_token=[redacted]"
    )


@pytest.mark.django_db
def test_json_of_an_unexpected_shape_is_permanent(graph, meta):
    graph.script(Answer(200, '{"data": "not a list of rows"}'))
    connection = restated(meta())

    assert sync(connection) == "error"

    assert (connection.last_sync_error_kind, connection.last_sync_error) == (
        "permanent",
        "Meta sent a response AdSync cannot read: Bad data to set object data",
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "failure",
    [
        html_502(),
        graph_error(2, "An unexpected error has occurred. Please retry your request later.", is_transient=True),
        # Meta's "unknown error" (code 1 without the "reduce the amount of data" subcode).
        graph_error(1, "An unknown error occurred", status=500),
        # HTML where JSON belongs, which the SDK would take for a success.
        Answer(200, "<html><body>Sorry, something went wrong.</body></html>", content_type="text/html"),
        html_page(403, "403 Forbidden"),
        # "success" in the page: the SDK would index the text with it (a TypeError).
        html_page(200, "Login successful"),
        Answer(200, ""),
        Answer(200, "[]"),
    ],
    ids=["html-502", "is-transient", "http-500", "html-200", "html-403", "html-200-success", "empty-200", "list"],
)
def test_transient_errors_are_retried_within_the_budget(graph, meta, failure):
    graph.insights[ACCOUNT] = two_days(spend="2.00")
    graph.script(failure, failure)
    connection = restated(meta())

    with time_machine.travel(NOW, tick=False):
        job = connection_enqueue_sync(connection=connection, now=NOW, send=False)
        sync_connection.apply(args=[connection.pk, str(job.job_id)])

    connection.refresh_from_db()
    assert (connection.sync_status, connection.last_sync_error) == ("idle", None)
    runs = SyncRun.objects.filter(connection=connection).order_by("pk")
    assert [(r.outcome, r.api_calls) for r in runs] == [("retrying", 1), ("retrying", 1), ("success", 1)]
    assert len(graph.insights_requests(ACCOUNT)) == 3
    assert ApiCallBucket.objects.filter(key=f"meta:{ACCOUNT}").aggregate(s=Sum("calls"))["s"] == 3
    assert DailyMetric.objects.filter(connection=connection).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (
            html_page(403, "403 Forbidden"),
            TransientProviderError,
            "Meta sent a response that could not be read (HTTP 403).",
        ),
        (html_page(200, "Sorry"), TransientProviderError, "Meta sent a response that could not be read (HTTP 200)."),
        (html_page(429, "Too Many Requests"), ThrottledError, "Meta is rate limiting this ad account (HTTP 429)."),
        (html_page(503, "Service Unavailable"), TransientProviderError, "Meta is temporarily unavailable (HTTP 503)."),
    ],
    ids=["html-403", "html-200", "html-429", "html-503"],
)
def test_a_body_that_is_not_json_is_a_provider_error_with_a_short_message(
    graph, meta, settings, answer, error, message
):
    settings.META_PAUSE_MINUTES = 7
    graph.insights[ACCOUNT] = two_days()
    graph.script(answer)
    meter = CallMeter(MetaProvider().budgets(external_account_id=ACCOUNT), clock=lambda: NOW)

    connection = meta()
    # The answer comes 4 s after the sync started: the pause counts from the answer.
    answered = NOW + timedelta(seconds=4)
    with pytest.raises(error) as raised, time_machine.travel(answered, tick=False):
        MetaProvider().fetch(
            connection=connection, since=date(2026, 11, 27), until=date(2026, 11, 28), now=NOW, meter=meter
        )

    assert type(raised.value) is error
    assert str(raised.value) == message
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None
    if error is ThrottledError:
        assert raised.value.until == answered + timedelta(minutes=7)
    assert meter.calls == calls_counted() == 1


@pytest.mark.django_db
def test_an_html_429_defers_the_connection_for_the_pause(graph, meta):
    graph.script(html_page(429, "Too Many Requests"))
    connection = restated(meta(sync_frequency=SyncFrequency.REALTIME))

    assert sync(connection) == "rate_limited"

    until = NOW + timedelta(minutes=5)
    assert (connection.sync_status, connection.last_sync_error, connection.rate_limited_until) == ("idle", None, until)
    run = last_run(connection)
    assert (run.outcome, run.error_class, run.api_calls) == ("rate_limited", "throttled", 1)
    assert run.error_message == "Meta is rate limiting this ad account (HTTP 429)."


@pytest.mark.django_db
def test_html_502_is_an_error_once_the_retries_run_out(graph, meta, settings):
    settings.SYNC_TRANSIENT_RETRIES = 1
    graph.script(html_502(), html_502())
    connection = restated(meta())

    with time_machine.travel(NOW, tick=False):
        job = connection_enqueue_sync(connection=connection, now=NOW, send=False)
        sync_connection.apply(args=[connection.pk, str(job.job_id)])

    connection.refresh_from_db()
    assert (connection.sync_status, connection.last_sync_error_kind) == ("error", "transient")
    assert connection.last_sync_error == "Meta is temporarily unavailable (HTTP 502)."
