"""OpenAPI descriptions of our authentication classes and strict input for drf-spectacular (loaded in apps.py),
and the schema class that documents the answer every operation can give: 503 while the database is down."""

import copy

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension

from connections.serializers import ErrorOut


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "connections.authentication.TokenAuthentication"
    name = ["tokenAuth", "bearerAuth"]

    def get_security_definition(self, auto_schema):
        return [
            {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": 'API key issued by `manage.py create_api_token`, sent as "Token <key>".',
            },
            {"type": "http", "scheme": "bearer", "description": "The same API key, sent as a Bearer token."},
        ]


class CookieTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "connections.authentication.CookieTokenAuthentication"
    name = "accessTokenCookie"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "access_token",
            "description": "The API key in the access_token cookie, as the spec's curl examples send it.",
        }


class StrictSerializerScheme(OpenApiSerializerExtension):
    """A StrictSerializer refuses fields it does not know (400), so its schema says so.

    drf-spectacular also takes every PATCH body as partial, as DRF's UpdateModelMixin makes it;
    our views validate the whole body (no partial=True), so required fields stay required.
    """

    target_class = "connections.serializers.StrictSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        serializer = copy.copy(self.target)
        serializer.partial = False
        schema = auto_schema._map_serializer(serializer, direction, bypass_extensions=True)
        return {**schema, "additionalProperties": False}


class AutoSchema(openapi.AutoSchema):
    """Documents adsync.middleware's 503 on every operation (one that has a 503 of its own keeps it)."""

    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        if operation is not None:
            operation["responses"].setdefault(
                "503",
                {
                    "description": "The database is unavailable; try again in a moment.",
                    "headers": {
                        "Retry-After": {
                            "schema": {"type": "integer"},
                            "description": "Seconds to wait before trying again.",
                            "required": True,
                        }
                    },
                    "content": {"application/json": {"schema": self.resolve_serializer(ErrorOut, "response").ref}},
                },
            )
        return operation
