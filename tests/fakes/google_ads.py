"""A fake Google Ads API and a fake Google OAuth server on 127.0.0.1, for the real google-ads SDK.

FakeGoogleAds is a gRPC server speaking TLS with a self-signed certificate for 127.0.0.1 (the
client trusts it through the real GOOGLE_ADS_CA_BUNDLE setting: nothing of ours is patched). It
registers the SDK's own message types, since the SDK ships no servicer classes:

- GoogleAdsService.SearchStream: for `FROM campaign`, the customer's campaign rows whose date is
  in the query's `segments.date BETWEEN`, in batches of `batch_size` (Google sends 10,000 a
  batch), with customer.currency_code and time_zone; for `FROM customer_client`, the customer
  itself (level 0) and, for a manager, its client accounts (level 1).
- CustomerService.ListAccessibleCustomers: `accessible`.

A customer not added with add_account() gets PERMISSION_DENIED (USER_PERMISSION_DENIED), as
Google answers for an account the user cannot reach.

Every call must carry `authorization: Bearer <token>` with a token FakeOAuth issued (otherwise
UNAUTHENTICATED with an OAUTH_TOKEN_INVALID GoogleAdsFailure, as Google answers). A campaign
query must also carry `developer-token: <developer_token>` (when that is set), and a
`login-customer-id`, when it has one, must name the customer or a manager whose clients include
it, as Google checks them. Tests queue
failures with fail_next() (quota with a retry delay, an auth failure trailer, UNAVAILABLE,
a failure after some batches, any of them answered after a `delay`) that are served before the
real answers, or refuse one customer's searches every time with refuse_customer(); and read
every call, with its metadata, from `calls`. A CampaignDay may carry values Google's types allow
but AdSync refuses (negative micros, NaN conversions, a `date_sent` that is not a date).

FakeOAuth serves the authorization endpoint (it consents at once and redirects back with a
code, checking the parameters), and the token endpoint for the code exchange and refreshes,
counting refreshes (answered after `refresh_delay` seconds, when set). A revoked or unknown
refresh token gets invalid_grant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent import futures
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.ads.googleads.v26.common.types.metrics import Metrics
from google.ads.googleads.v26.common.types.segments import Segments
from google.ads.googleads.v26.errors.types import errors
from google.ads.googleads.v26.resources.types.campaign import Campaign as CampaignResource
from google.ads.googleads.v26.resources.types.customer import Customer as CustomerResource
from google.ads.googleads.v26.resources.types.customer_client import CustomerClient
from google.ads.googleads.v26.services.types import customer_service, google_ads_service
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

VERSION = "v26"
FAILURE_KEY = f"google.ads.googleads.{VERSION}.errors.googleadsfailure-bin"
ADWORDS_SCOPE = "https://www.googleapis.com/auth/adwords"


# --- data --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CampaignDay:
    customer_id: str
    campaign_id: int
    name: str
    day: date
    cost_micros: int
    impressions: int = 0
    clicks: int = 0
    conversions: float = 0.0
    conversions_value: float = 0.0
    # segments.date as sent, when it is not `day` (a malformed one): the row is still filed
    # under `day` for the query's BETWEEN.
    date_sent: str | None = None


@dataclasses.dataclass(frozen=True)
class Account:
    customer_id: str
    name: str
    currency: str = "USD"
    time_zone: str = "America/New_York"
    manager: bool = False
    clients: tuple[str, ...] = ()
    status: str = "ENABLED"


@dataclasses.dataclass(frozen=True)
class Call:
    method: str  # "SearchStream" or "ListAccessibleCustomers"
    customer_id: str
    query: str
    metadata: dict[str, str]
    # The client's address and port: the same for two calls on one reused channel.
    peer: str


# --- scripted failures -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple


@dataclasses.dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    message: str
    trailers: tuple = ()
    # Fail mid-stream, after sending this many batches.
    after_batches: int = 0
    # Seconds Google takes before it answers so (a slow query throttled at its end).
    delay: float = 0.0

    def abort(self, context: grpc.ServicerContext) -> None:
        if self.delay:
            time.sleep(self.delay)
        context.abort_with_status(_Status(self.code, self.message, self.trailers))


def _failure_trailers(
    kind: str, name: str, message: str, request_id: str, details: errors.ErrorDetails | None = None
) -> tuple:
    enum = errors.ErrorCode.meta.fields[kind].enum
    error = errors.GoogleAdsError(error_code=errors.ErrorCode(**{kind: enum[name]}), message=message)
    if details is not None:
        error.details = details
    failure = errors.GoogleAdsFailure(errors=[error], request_id=request_id)
    return ((FAILURE_KEY, errors.GoogleAdsFailure.serialize(failure)), ("request-id", request_id))


def ads_failure(
    kind: str,
    name: str,
    message: str,
    *,
    status: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
    request_id: str = "req-failure",
) -> Failure:
    """A GoogleAdsFailure trailer, e.g. ads_failure("authentication_error", "OAUTH_TOKEN_EXPIRED", ...)."""
    return Failure(status, message, _failure_trailers(kind, name, message, request_id))


def resource_exhausted(retry_seconds: int | None = 90, *, request_id: str = "req-quota") -> Failure:
    """RESOURCE_EXHAUSTED with a quota GoogleAdsFailure, its retry delay in QuotaErrorDetails."""
    details = errors.ErrorDetails(
        quota_error_details=errors.QuotaErrorDetails(
            rate_scope=errors.QuotaErrorDetails.QuotaRateScope.ACCOUNT,
            rate_name="Requests per account",
            retry_delay=duration_pb2.Duration(seconds=retry_seconds) if retry_seconds else None,
        )
    )
    message = "Too many requests. Retry in the time given in the details."
    trailers = _failure_trailers("quota_error", "RESOURCE_TEMPORARILY_EXHAUSTED", message, request_id, details)
    return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "Resource has been exhausted (e.g. check quota).", trailers)


def resource_exhausted_retry_info(retry_seconds: int) -> Failure:
    """RESOURCE_EXHAUSTED carrying only a google.rpc.RetryInfo in the status details."""
    retry_info = any_pb2.Any()
    retry_info.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_seconds)))
    message = "Quota exceeded."
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message=message, details=[retry_info])
    trailers = (("grpc-status-details-bin", status.SerializeToString()),)
    return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, message, trailers)


def developer_token_not_approved() -> Failure:
    """What Google answers a developer token with test access only, for a production account."""
    return ads_failure(
        "authorization_error",
        "DEVELOPER_TOKEN_NOT_APPROVED",
        "The developer token is only approved for use with test accounts. To access non-test accounts, "
        "apply for Basic or Standard access.",
        status=grpc.StatusCode.PERMISSION_DENIED,
        request_id="req-token-test-only",
    )


def user_permission_denied() -> Failure:
    return ads_failure(
        "authorization_error",
        "USER_PERMISSION_DENIED",
        "User doesn't have permission to access customer.",
        status=grpc.StatusCode.PERMISSION_DENIED,
        request_id="req-permission",
    )


def not_ads_user() -> Failure:
    """What Google answers a Google login that is not in any Google Ads account."""
    return ads_failure(
        "authentication_error",
        "NOT_ADS_USER",
        "User in the cookie is not a valid Ads user.",
        status=grpc.StatusCode.UNAUTHENTICATED,
        request_id="req-not-ads-user",
    )


def unavailable(message: str = "The service is currently unavailable.") -> Failure:
    return Failure(grpc.StatusCode.UNAVAILABLE, message)


# --- the gRPC server ---------------------------------------------------------------------------

_BETWEEN = re.compile(r"segments\.date\s+BETWEEN\s+'(\d{4}-\d{2}-\d{2})'\s+AND\s+'(\d{4}-\d{2}-\d{2})'", re.I)
_FROM = re.compile(r"\bFROM\s+(\w+)", re.I)


class FakeGoogleAds:
    def __init__(self, *, oauth: FakeOAuth, certificate: bytes, private_key: bytes, max_workers: int = 8):
        self.oauth = oauth
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.reset()
        # Threads answering at once (a benchmark's slow answers want more than the tests' 8).
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    f"google.ads.googleads.{VERSION}.services.GoogleAdsService",
                    {
                        "SearchStream": grpc.unary_stream_rpc_method_handler(
                            self._search_stream,
                            request_deserializer=google_ads_service.SearchGoogleAdsStreamRequest.deserialize,
                            response_serializer=google_ads_service.SearchGoogleAdsStreamResponse.serialize,
                        )
                    },
                ),
                grpc.method_handlers_generic_handler(
                    f"google.ads.googleads.{VERSION}.services.CustomerService",
                    {
                        "ListAccessibleCustomers": grpc.unary_unary_rpc_method_handler(
                            self._list_accessible_customers,
                            request_deserializer=customer_service.ListAccessibleCustomersRequest.deserialize,
                            response_serializer=customer_service.ListAccessibleCustomersResponse.serialize,
                        )
                    },
                ),
            ]
        )
        credentials = grpc.ssl_server_credentials([(private_key, certificate)])
        self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.endpoint = f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.campaigns: list[CampaignDay] = []
            self.accounts: dict[str, Account] = {}
            self.accessible: list[str] = []
            self.batch_size = 10_000
            self.failures: deque[Failure] = deque()
            # customer id -> the failure every search of that customer gets.
            self.refused_customers: dict[str, Failure] = {}
            # What a call must send as developer-token; None: anything, or nothing.
            self.developer_token: str | None = "fake-developer-token"

    def fail_next(self, *failures: Failure) -> None:
        with self.lock:
            self.failures.extend(failures)

    def refuse_customer(self, customer_id: str, failure: Failure) -> None:
        with self.lock:
            self.refused_customers[customer_id] = failure

    def add_account(self, account: Account) -> Account:
        self.accounts[account.customer_id] = account
        return account

    def search_streams(self) -> list[Call]:
        return [call for call in self.calls if call.method == "SearchStream"]

    # -- handlers --

    def _record(self, method: str, customer_id: str, query: str, context) -> Failure | None:
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        with self.lock:
            self.calls.append(Call(method, customer_id, query, metadata, context.peer()))
            failure = self.failures.popleft() if self.failures else None
        if failure is None and not self.oauth.is_valid(metadata.get("authorization", "")):
            failure = ads_failure(
                "authentication_error",
                "OAUTH_TOKEN_INVALID",
                "Oauth token in the header is not valid.",
                status=grpc.StatusCode.UNAUTHENTICATED,
                request_id="req-bad-token",
            )
        return failure

    def _search_stream(self, request, context):
        failure = self._record("SearchStream", request.customer_id, request.query, context)
        if failure is None:
            with self.lock:
                failure = self.refused_customers.get(request.customer_id)
        if failure is None and request.customer_id not in self.accounts:
            # Google answers a customer the user cannot reach (or that does not exist) so.
            failure = user_permission_denied()
        if failure is not None and not failure.after_batches:
            failure.abort(context)
        source = (_FROM.search(request.query) or [None, ""])[1].lower()
        if source == "campaign":
            refused = self._check_headers(request.customer_id, context)
            if refused is not None:
                refused.abort(context)
            results = self._campaign_rows(request.customer_id, request.query)
        elif source == "customer_client":
            results = self._customer_client_rows(request.customer_id)
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the fake does not serve FROM {source!r}")
        for number, start in enumerate(range(0, len(results), self.batch_size)):
            if failure is not None and number == failure.after_batches:
                failure.abort(context)
            yield google_ads_service.SearchGoogleAdsStreamResponse(
                results=results[start : start + self.batch_size], request_id=f"req-{len(self.calls)}"
            )
        if failure is not None:
            failure.abort(context)

    def _check_headers(self, customer_id: str, context) -> Failure | None:
        """The developer-token and login-customer-id checks Google makes, as Google answers them."""
        metadata = dict(context.invocation_metadata())
        if self.developer_token is not None and metadata.get("developer-token") != self.developer_token:
            return ads_failure(
                "authentication_error",
                "DEVELOPER_TOKEN_INVALID",
                "The developer token is not valid.",
                status=grpc.StatusCode.UNAUTHENTICATED,
                request_id="req-developer-token",
            )
        login = metadata.get("login-customer-id")
        if login is None or login == customer_id:
            return None
        if not re.fullmatch(r"\d{10}", login):
            return ads_failure(
                "header_error",
                "INVALID_LOGIN_CUSTOMER_ID",
                "The login customer ID header is invalid.",
                request_id="req-login-customer-id",
            )
        manager = self.accounts.get(login)
        if manager is None or not manager.manager or customer_id not in manager.clients:
            return ads_failure(
                "authorization_error",
                "INVALID_LOGIN_CUSTOMER_ID_SERVING_CUSTOMER_ID_COMBINATION",
                "The login customer specified does not have access to the account specified.",
                status=grpc.StatusCode.PERMISSION_DENIED,
                request_id="req-login-customer-id",
            )
        return None

    def _campaign_rows(self, customer_id: str, query: str) -> list:
        since, until = (date.fromisoformat(d) for d in _BETWEEN.search(query).groups())
        account = self.accounts.get(customer_id) or Account(customer_id, "Unnamed")
        return [
            google_ads_service.GoogleAdsRow(
                customer=CustomerResource(currency_code=account.currency, time_zone=account.time_zone),
                campaign=CampaignResource(id=row.campaign_id, name=row.name),
                segments=Segments(date=row.day.isoformat() if row.date_sent is None else row.date_sent),
                metrics=Metrics(
                    cost_micros=row.cost_micros,
                    impressions=row.impressions,
                    clicks=row.clicks,
                    conversions=row.conversions,
                    conversions_value=row.conversions_value,
                ),
            )
            for row in self.campaigns
            if row.customer_id == customer_id and since <= row.day <= until
        ]

    def _customer_client_rows(self, customer_id: str) -> list:
        account = self.accounts[customer_id]
        members = [(account, 0)] + [(self.accounts[c], 1) for c in account.clients]
        return [
            google_ads_service.GoogleAdsRow(
                customer_client=CustomerClient(
                    id=int(member.customer_id),
                    descriptive_name=member.name,
                    currency_code=member.currency,
                    time_zone=member.time_zone,
                    manager=member.manager,
                    level=level,
                    status=CustomerClient.meta.fields["status"].enum[member.status],
                )
            )
            for member, level in members
        ]

    def _list_accessible_customers(self, request, context):
        failure = self._record("ListAccessibleCustomers", "", "", context)
        if failure is not None:
            failure.abort(context)
        return customer_service.ListAccessibleCustomersResponse(
            resource_names=[f"customers/{customer_id}" for customer_id in self.accessible]
        )


# --- the OAuth server --------------------------------------------------------------------------


class FakeOAuth:
    def __init__(self, *, client_id: str, client_secret: str):
        self.client_id = client_id
        self.client_secret = client_secret
        self.lock = threading.Lock()
        self.reset()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake._authorize(self)

            def do_POST(self):
                fake._token(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def reset(self) -> None:
        with self.lock:
            self.counter = itertools.count(1)
            self.code_counter = itertools.count(1)
            self.refresh_tokens: set[str] = set()
            self.access_tokens: set[str] = set()
            self.codes: dict[str, tuple[str, str]] = {}  # code -> (refresh token, redirect uri)
            self.refreshes: list[str] = []
            self.exchanges: list[dict[str, str]] = []
            # (status, raw body) answers the token endpoint serves before any real one.
            self.token_answers: deque[tuple[int, str]] = deque()
            # What the next consent grants.
            self.next_refresh_token = "1//fake-refresh-token"
            # Seconds the token endpoint takes to answer a refresh.
            self.refresh_delay = 0.0

    def grant(self, refresh_token: str) -> str:
        """A refresh token the user granted (as a past consent would have)."""
        with self.lock:
            self.refresh_tokens.add(refresh_token)
        return refresh_token

    def revoke(self, refresh_token: str) -> None:
        with self.lock:
            self.refresh_tokens.discard(refresh_token)

    def issue_access_token(self) -> str:
        with self.lock:
            token = f"ya29.fake-access-{next(self.counter)}"
            self.access_tokens.add(token)
        return token

    def is_valid(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        with self.lock:
            return scheme == "Bearer" and token in self.access_tokens

    # -- handlers --

    def _reply(self, handler, status: int, body: dict | None = None, headers: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _authorize(self, handler) -> None:
        url = urlsplit(handler.path)
        params = dict(parse_qsl(url.query))
        expected = {"client_id": self.client_id, "response_type": "code", "access_type": "offline"}
        wrong = [key for key, value in expected.items() if params.get(key) != value]
        if url.path != "/auth" or wrong or ADWORDS_SCOPE not in params.get("scope", "").split():
            self._reply(handler, 400, {"error": "invalid_request", "wrong": wrong})
            return
        code = f"4/fake-code-{next(self.code_counter)}"
        with self.lock:
            self.codes[code] = (self.next_refresh_token, params["redirect_uri"])
        query = urlencode({"code": code, "state": params.get("state", ""), "scope": params["scope"]})
        self._reply(handler, 302, headers={"Location": f"{params['redirect_uri']}?{query}"})

    def answer_token_next(self, status: int, body: str) -> None:
        """Serve this raw answer (anything, not only JSON objects) at the token endpoint once."""
        with self.lock:
            self.token_answers.append((status, body))

    def _token(self, handler) -> None:
        length = int(handler.headers.get("Content-Length", 0))
        form = dict(parse_qsl(handler.rfile.read(length).decode()))
        with self.lock:
            scripted = self.token_answers.popleft() if self.token_answers else None
        if scripted is not None:
            data = scripted[1].encode()
            handler.send_response(scripted[0])
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        if (form.get("client_id"), form.get("client_secret")) != (self.client_id, self.client_secret):
            self._reply(handler, 401, {"error": "invalid_client", "error_description": "Unauthorized"})
            return
        grant_type = form.get("grant_type")
        if grant_type == "refresh_token":
            if self.refresh_delay:
                time.sleep(self.refresh_delay)
            refresh_token = form.get("refresh_token", "")
            with self.lock:
                self.refreshes.append(refresh_token)
                known = refresh_token in self.refresh_tokens
            if not known:
                self._reply(
                    handler, 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
                )
                return
            body = {"access_token": self.issue_access_token(), "expires_in": 3599, "token_type": "Bearer"}
            self._reply(handler, 200, dict(body, scope=ADWORDS_SCOPE))
        elif grant_type == "authorization_code":
            with self.lock:
                self.exchanges.append(form)
                refresh_token, redirect_uri = self.codes.pop(form.get("code", ""), (None, None))
            if refresh_token is None or redirect_uri != form.get("redirect_uri"):
                self._reply(handler, 400, {"error": "invalid_grant", "error_description": "Malformed auth code."})
                return
            self.grant(refresh_token)
            body = {
                "access_token": self.issue_access_token(),
                "expires_in": 3599,
                "refresh_token": refresh_token,
                "scope": ADWORDS_SCOPE,
                "token_type": "Bearer",
            }
            self._reply(handler, 200, body)
        else:
            self._reply(handler, 400, {"error": "unsupported_grant_type"})


# --- both, running -----------------------------------------------------------------------------


def self_signed_certificate() -> tuple[bytes, bytes]:
    """A certificate (PEM) for localhost and 127.0.0.1, and its private key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AdSync test Google Ads")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Wide validity: tests travel in time, and the server checks nothing of it, but clients do.
        .not_valid_before(now - dt.timedelta(days=3650))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


@dataclasses.dataclass
class GoogleFakes:
    ads: FakeGoogleAds
    oauth: FakeOAuth
    ca_bundle: str

    def reset(self) -> None:
        self.ads.reset()
        self.oauth.reset()

    def configure(self, settings) -> None:
        """Point the app's real settings at the fakes (pytest-django's `settings` fixture)."""
        settings.GOOGLE_ADS_ENDPOINT = self.ads.endpoint
        settings.GOOGLE_ADS_CA_BUNDLE = self.ca_bundle
        settings.GOOGLE_ADS_TIMEOUT = 10.0
        settings.GOOGLE_TOKEN_URL = f"{self.oauth.url}/token"
        settings.GOOGLE_OAUTH_AUTHORIZE_URL = f"{self.oauth.url}/auth"
        settings.GOOGLE_CLIENT_ID = self.oauth.client_id
        settings.GOOGLE_CLIENT_SECRET = self.oauth.client_secret
        settings.GOOGLE_DEVELOPER_TOKEN = "fake-developer-token"
        settings.GOOGLE_HTTP_TIMEOUT = 5.0


@contextlib.contextmanager
def google_fakes_running(directory: Path) -> Iterator[GoogleFakes]:
    certificate, key = self_signed_certificate()
    ca_bundle = directory / "google-ads-ca.pem"
    ca_bundle.write_bytes(certificate)
    oauth = FakeOAuth(client_id="fake-client.apps.googleusercontent.com", client_secret="fake-client-secret")
    ads = FakeGoogleAds(oauth=oauth, certificate=certificate, private_key=key)
    oauth_thread = threading.Thread(target=oauth.server.serve_forever, name="fake-google-oauth", daemon=True)
    oauth_thread.start()
    ads.server.start()
    try:
        yield GoogleFakes(ads=ads, oauth=oauth, ca_bundle=str(ca_bundle))
    finally:
        ads.server.stop(grace=None).wait(5)
        oauth.server.shutdown()
        oauth.server.server_close()
