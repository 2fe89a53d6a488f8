"""A JSON field encrypted at rest with Fernet (AES-128-CBC + HMAC), keys from settings.

Provider credentials live here. The database, backups and the admin's raw views only ever see
ciphertext; code sees a dict. Keys rotate through settings.ENCRYPTION_KEYS: the first key
encrypts, every key decrypts.
"""

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(f"ADSYNC_ENCRYPTION_KEYS holds an invalid Fernet key: {exc}") from None


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.ENCRYPTION_KEYS))


if TYPE_CHECKING:
    # For django-stubs: the model attribute is a dict, set and read, not TextField's str. (Field
    # classes take type arguments only under django_stubs_ext.monkeypatch() at run time.)
    _TextStoredDict = models.TextField[dict[str, Any], dict[str, Any]]
else:
    _TextStoredDict = models.TextField


class EncryptedJSONField(_TextStoredDict):
    """Stores a JSON-serialisable dict as one Fernet token; {} is stored as the empty string."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("default", dict)
        kwargs.setdefault("blank", True)
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def from_db_value(self, value, expression, connection):
        return self.to_python(value)

    def to_python(self, value):
        if isinstance(value, dict):
            return value
        if not value:
            return {}
        try:
            return json.loads(fernet().decrypt(value.encode()))
        except InvalidToken:
            # Never fall back to reading the value as plain text: it would hide a lost key.
            raise ImproperlyConfigured(
                f"{self.model.__name__}.{self.name} cannot be decrypted with any of ADSYNC_ENCRYPTION_KEYS"
            ) from None

    def get_prep_value(self, value):
        if value is None or value == {} or value == "":
            return ""
        if not isinstance(value, dict):
            raise TypeError(f"{self.name} holds a dict, not {type(value).__name__}")
        return fernet().encrypt(json.dumps(value, sort_keys=True).encode()).decode()

    def value_to_string(self, obj):
        # Serialisation (dumpdata) must not leak plaintext either.
        return self.get_prep_value(self.value_from_object(obj))
