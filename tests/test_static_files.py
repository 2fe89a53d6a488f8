"""Static files: the app's own and the admin's, served through Django's test client."""

from __future__ import annotations

from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parent.parent / "static"


# --- static files -------------------------------------------------------------------------------------------
# (django_db: a request's end checks the open database connection, which SQLite keeps between tests)


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("url", "path", "content_type"),
    [
        ("/static/css/app.css", "css/app.css", "text/css"),
        ("/static/js/settings.js", "js/settings.js", "text/javascript"),
        ("/static/css/engine-banner.css", "css/engine-banner.css", "text/css"),
        ("/static/favicon.svg", "favicon.svg", "image/svg+xml"),
    ],
)
def test_static_files_are_served(client, url, path, content_type):
    response = client.get(url)

    assert response.status_code == 200
    assert response["Content-Type"].split(";")[0] == content_type
    assert b"".join(response.streaming_content) == (STATIC / path).read_bytes()
    response.close()


@pytest.mark.django_db
@pytest.mark.embedded
def test_static_admin_css_is_served(client):
    response = client.get("/static/admin/css/base.css")

    assert response.status_code == 200
    response.close()


@pytest.mark.django_db
@pytest.mark.embedded
def test_favicon_ico_points_at_the_icon(client):
    # Browsers ask for /favicon.ico where a page names no icon; it used to 404 on every load.
    response = client.get("/favicon.ico")

    assert (response.status_code, response["Location"]) == (301, "/static/favicon.svg")


@pytest.mark.django_db
@pytest.mark.embedded
def test_pages_name_the_icon(client, admin_client):
    from tests.pages import parse

    for page in (parse(client.get("/login/").content), parse(admin_client.get("/admin/").content)):
        (icon,) = page.find_all("link", rel="icon")
        assert icon.attrs["href"] == "/static/favicon.svg"
