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
