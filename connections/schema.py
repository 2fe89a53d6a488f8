"""OpenAPI descriptions of our authentication classes for drf-spectacular (loaded in apps.py)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


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
