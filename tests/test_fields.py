import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.db import connection as db

from connections.fields import _fernet
from connections.models import Connection

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

SECRET = {"access_token": "EAAB-very-secret-token"}


def raw_credentials(connection) -> str:
    with db.cursor() as cursor:
        cursor.execute("SELECT credentials FROM connections WHERE id = %s", [connection.pk])
        return cursor.fetchone()[0]


def test_credentials_are_encrypted_at_rest(make_connection):
    connection = make_connection(credentials=SECRET)

    stored = raw_credentials(connection)

    assert "very-secret" not in stored
    assert "access_token" not in stored
    assert Connection.objects.get(pk=connection.pk).credentials == SECRET


def test_empty_credentials_are_stored_empty(connection):
    assert raw_credentials(connection) == ""
    assert Connection.objects.get(pk=connection.pk).credentials == {}


def test_rotated_keys_still_decrypt_old_values(make_connection, settings):
    connection = make_connection(credentials=SECRET)
    old_key = settings.ENCRYPTION_KEYS[0]

    settings.ENCRYPTION_KEYS = [Fernet.generate_key().decode(), old_key]

    assert Connection.objects.get(pk=connection.pk).credentials == SECRET


def test_a_lost_key_fails_loudly(make_connection, settings):
    connection = make_connection(credentials=SECRET)

    settings.ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(ImproperlyConfigured, match="cannot be decrypted"):
        Connection.objects.get(pk=connection.pk)


def test_an_invalid_key_is_a_configuration_error(settings):
    _fernet.cache_clear()
    with pytest.raises(ImproperlyConfigured, match="invalid Fernet key"):
        _fernet(("not-a-key",))
