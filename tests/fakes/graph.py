"""A fake Meta Graph API on 127.0.0.1, for the real facebook-business SDK (and httpx) to talk to.

It serves what AdSync calls, the way Meta answers it:

- GET /<version>/act_<id>/insights: campaign rows of the account filtered by `time_range`, in
  pages of `limit` (or `page_size`), with `paging.cursors.after` and `paging.next` while more
  rows remain; the usage headers in `usage_headers` on every answer. A `time_range` longer than
  `max_days` days is refused, every time, with "Please reduce the amount of data", as Meta
  refuses large requests for busy accounts, in the shape `too_much_data_shape` names (see
  too_much_data()).
- GET /<version>/dialog/oauth: the OAuth dialog, which consents at once: it redirects to the
  redirect_uri with `dialog_code` and the state, and remembers that redirect_uri for the code.
- GET /<version>/oauth/access_token: the code exchange (each code works once, and only with the
  dialog's redirect_uri, as Meta checks) and the long-lived token exchange.
- GET /<version>/me/adaccounts: the token owner's ad accounts, paged the same way.

Tokens are checked (a wrong one gets error 190, as Meta answers), and so is appsecret_proof
when the client sends one; with `require_proof` a call without one is refused, as for an app
with "Require App Secret" on. Tests queue answers with `script()` (a Graph error, an HTML 502) that are
served before the real ones (or one that never answers: `Answer(..., hang=True)`), and read every
request from `requests`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

VERSION = "v26.0"
TOO_MUCH_DATA_MESSAGE = "Please reduce the amount of data you're asking for, then retry your request"


@dataclasses.dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]

    @property
    def time_range(self) -> dict[str, str]:
        return json.loads(self.params["time_range"])


@dataclasses.dataclass
class Answer:
    status: int
    body: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    content_type: str = "application/json"
    # Never answer: hold the request until the server stops (a platform that does not answer).
    hang: bool = False


def graph_error(
    code: int,
    message: str = "An error occurred",
    *,
    subcode: int | None = None,
    is_transient: bool = False,
    status: int = 400,
    error_type: str = "OAuthException",
    headers: dict[str, str] | None = None,
) -> Answer:
    """An error the way the Graph API sends one."""
    error = {"message": message, "type": error_type, "code": code, "is_transient": is_transient, "fbtrace_id": "Afake"}
    if subcode is not None:
        error["error_subcode"] = subcode
    return Answer(status, json.dumps({"error": error}), headers or {})


def too_much_data(shape: str = "1/1487534") -> Answer:
    """Meta's "Please reduce the amount of data you're asking for", in the shapes it is seen in:

    - "1": HTTP 500, code 1 and no subcode, nothing else in the error (the usual one; see
      facebook-python-business-sdk#470, singer-io/tap-facebook#65);
    - "1/1487534": HTTP 500, code 1 with subcode 1487534;
    - "100/1487534": HTTP 400, code 100 with subcode 1487534.
    """
    if shape == "1":
        return Answer(500, json.dumps({"error": {"code": 1, "message": TOO_MUCH_DATA_MESSAGE}}))
    if shape == "1/1487534":
        return graph_error(1, TOO_MUCH_DATA_MESSAGE, subcode=1487534, status=500)
    if shape == "100/1487534":
        return graph_error(100, TOO_MUCH_DATA_MESSAGE, subcode=1487534, status=400)
    raise ValueError(f"unknown too-much-data shape {shape!r}")


def html_page(status: int, title: str = "Error") -> Answer:
    """An HTML page where JSON belongs, as a proxy in front of Meta sends one."""
    body = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
    return Answer(status, body, content_type="text/html")


def html_502() -> Answer:
    """What a load balancer in front of Meta sends now and then: HTML, not JSON."""
    body = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
    return Answer(502, body, content_type="text/html")


def buc_usage(account: str, percent: float, *, regain_minutes: int = 0) -> dict[str, str]:
    """X-Business-Use-Case-Usage as Meta sends it for an ad account."""
    entry = {
        "type": "ads_insights",
        "call_count": percent,
        "total_cputime": 1,
        "total_time": 1,
        "estimated_time_to_regain_access": regain_minutes,
    }
    return {"X-Business-Use-Case-Usage": json.dumps({account: [entry]})}


def insight(campaign: str, day: str, *, name: str | None = None, **fields) -> dict:
    """One row of /insights at campaign level with time_increment=1 (Meta sends numbers as strings)."""
    row = {
        "account_currency": "USD",
        "campaign_id": campaign,
        "campaign_name": name or f"Campaign {campaign}",
        "date_start": day,
        "date_stop": day,
        "spend": "0",
        "impressions": "0",
        "clicks": "0",
    }
    row.update(fields)
    return row


# The key under which a stored row lists the fields the fake leaves out of its answer.
_LEFT_OUT = "_fake_left_out"


def without(row: dict, *fields: str) -> dict:
    """The row as Meta would send it without these fields; the fake still files it under its
    date_start (so a row can arrive with no date_start)."""
    return {**row, _LEFT_OUT: fields}


def _as_sent(row: dict) -> dict:
    left_out = (_LEFT_OUT, *row.get(_LEFT_OUT, ()))
    return {key: value for key, value in row.items() if key not in left_out}


class FakeGraph:
    def __init__(self):
        self.requests: list[Recorded] = []
        # account number -> insight rows (see insight())
        self.insights: dict[str, list[dict]] = {}
        # Force a page size smaller than the `limit` the client asks for (paging tests).
        self.page_size: int | None = None
        # The most days one insights request may span; None: any.
        self.max_days: int | None = None
        # How a request over max_days is refused: a shape too_much_data() knows.
        self.too_much_data_shape = "1/1487534"
        self.usage_headers: dict[str, str] = {}
        # Called for each insights answer's usage headers instead, when set (headers that change
        # from one answer to the next).
        self.usage_headers_for: Callable[[], dict[str, str]] | None = None
        # Tokens the API accepts; None accepts any.
        self.valid_tokens: set[str] | None = None
        self.app_id = "1234"
        self.app_secret = "app-secret"
        # OAuth: code -> short-lived token (spent when exchanged); short-lived -> (long-lived, expires_in)
        self.codes: dict[str, str] = {}
        self.long_lived: dict[str, tuple[str, int | None]] = {}
        # The code the dialog hands out, and the redirect_uri each handed-out code was issued for.
        self.dialog_code: str | None = None
        self.code_redirects: dict[str, str] = {}
        self.dialogs: list[Recorded] = []
        # Refuse API calls (not the OAuth ones) that carry no appsecret_proof.
        self.require_proof = False
        # token -> the ad accounts /me/adaccounts lists for it
        self.ad_accounts: dict[str, list[dict]] = {}
        self._scripted: list[Answer] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, *answers: Answer) -> None:
        """Serve these answers, in order, before any real one."""
        with self._lock:
            self._scripted.extend(answers)

    def insights_requests(self, account: str | None = None) -> list[Recorded]:
        suffix = f"act_{account}/insights" if account else "/insights"
        return [r for r in self.requests if r.path.endswith(suffix)]

    def oauth_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/oauth/access_token")]

    # --- serving ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeGraph]:
        graph = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; without TCP_NODELAY the client's delayed
            # ACK adds ~40 ms to every call.
            disable_nagle_algorithm = True

            def do_GET(self):
                graph._handle(self)

            def do_POST(self):
                graph._handle(self)

            def log_message(self, format, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stopping.set()
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=5)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(handler.headers.get("Content-Length") or 0)
        if length:
            params.update(parse_qsl(handler.rfile.read(length).decode(), keep_blank_values=True))
        recorded = Recorded(handler.command, parts.path, params, dict(handler.headers.items()))
        if parts.path == f"/{VERSION}/dialog/oauth":
            # The browser's visit to the dialog, not an API call: kept apart, never scripted.
            with self._lock:
                self.dialogs.append(recorded)
            answer = self._dialog(params)
        else:
            with self._lock:
                self.requests.append(recorded)
                scripted = self._scripted.pop(0) if self._scripted else None
            answer = scripted or self._answer(recorded)
        if answer.hang:
            self._stopping.wait()
            return
        body = answer.body.encode()
        handler.send_response(answer.status)
        handler.send_header("Content-Type", answer.content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _answer(self, request: Recorded) -> Answer:
        path = request.path
        if path == f"/{VERSION}/oauth/access_token":
            return self._oauth(request.params)
        denied = self._check_token(request.params)
        if denied:
            return denied
        if path.startswith(f"/{VERSION}/act_") and path.endswith("/insights"):
            account = path.split("/")[2].removeprefix("act_")
            return self._insights(account, request.params)
        if path == f"/{VERSION}/me/adaccounts":
            rows = self.ad_accounts.get(request.params["access_token"], [])
            return self._page(rows, request.params, path, {})
        return graph_error(100, f"Unknown path components: {path}", status=404)

    def _check_token(self, params: dict[str, str]) -> Answer | None:
        token = params.get("access_token", "")
        if not token or (self.valid_tokens is not None and token not in self.valid_tokens):
            return graph_error(190, "Error validating access token: Session has expired.", subcode=463, status=400)
        proof = params.get("appsecret_proof")
        if proof is None and self.require_proof:
            return graph_error(
                100, "API calls from the server require an appsecret_proof argument", error_type="GraphMethodException"
            )
        if proof is not None:
            expected = hmac.new(self.app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(proof, expected):
                return graph_error(
                    100, "Invalid appsecret_proof provided in the API argument", error_type="GraphMethodException"
                )
        return None

    def _insights(self, account: str, params: dict[str, str]) -> Answer:
        if params.get("level") != "campaign" or params.get("time_increment") != "1":
            return graph_error(100, "(#100) level and time_increment are required by this fake")
        window = json.loads(params["time_range"])
        days = (date.fromisoformat(window["until"]) - date.fromisoformat(window["since"])).days + 1
        if self.max_days is not None and days > self.max_days:
            return too_much_data(self.too_much_data_shape)
        rows = [
            row for row in self.insights.get(account, []) if window["since"] <= row["date_start"] <= window["until"]
        ]
        rows.sort(key=lambda r: (r["date_start"], r["campaign_id"]))
        rows = [_as_sent(row) for row in rows]
        headers = self.usage_headers_for() if self.usage_headers_for else dict(self.usage_headers)
        return self._page(rows, params, f"/{VERSION}/act_{account}/insights", headers)

    def _page(self, rows: list[dict], params: dict[str, str], path: str, headers: dict[str, str]) -> Answer:
        size = self.page_size or int(params.get("limit") or 25)
        start = int(params.get("after") or 0)
        page = rows[start : start + size]
        body: dict = {"data": page}
        if rows:
            after = start + len(page)
            body["paging"] = {"cursors": {"before": str(start), "after": str(after)}}
            if after < len(rows):
                # Meta's next link repeats the query, token included, with the new cursor.
                body["paging"]["next"] = f"{self.url}{path}?{urlencode({**params, 'after': str(after)})}"
        return Answer(200, json.dumps(body), headers)

    def _oauth(self, params: dict[str, str]) -> Answer:
        if params.get("client_id") != self.app_id or params.get("client_secret") != self.app_secret:
            return graph_error(1, "Error validating client secret.")
        if params.get("grant_type") == "fb_exchange_token":
            found = self.long_lived.get(params.get("fb_exchange_token", ""))
            if found is None:
                return graph_error(190, "Error validating access token: Session has expired.", subcode=463)
            token, expires_in = found
            answer = {"access_token": token, "token_type": "bearer"}
            if expires_in is not None:
                answer["expires_in"] = expires_in
            return Answer(200, json.dumps(answer))
        code = params.get("code", "")
        with self._lock:
            short = self.codes.pop(code, None)
            issued_for = self.code_redirects.pop(code, None)
        if short is None or not params.get("redirect_uri"):
            return graph_error(100, "Invalid verification code format.", error_type="OAuthException")
        if issued_for is not None and params["redirect_uri"] != issued_for:
            return graph_error(
                100,
                "Error validating verification code. Please make sure your redirect_uri is identical to the one "
                "you used in the OAuth dialog request",
            )
        return Answer(200, json.dumps({"access_token": short, "token_type": "bearer", "expires_in": 5400}))

    def _dialog(self, params: dict[str, str]) -> Answer:
        if params.get("client_id") != self.app_id or not params.get("redirect_uri") or not self.dialog_code:
            return Answer(400, "<html><body>Invalid App ID or redirect_uri</body></html>", content_type="text/html")
        with self._lock:
            self.code_redirects[self.dialog_code] = params["redirect_uri"]
        query = urlencode({"code": self.dialog_code, "state": params.get("state", "")})
        return Answer(302, "", {"Location": f"{params['redirect_uri']}?{query}"}, content_type="text/html")
