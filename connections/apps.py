from django.apps import AppConfig


class ConnectionsConfig(AppConfig):
    name = "connections"
    verbose_name = "Connections"

    def ready(self) -> None:
        # Registers the OpenAPI descriptions of our authentication classes.
        from connections import schema  # noqa: F401
