from django.contrib.admin.apps import AdminConfig


class BrokerAdminConfig(AdminConfig):
    """django.contrib.admin with the broker's site as admin.site (a module of its own: the site
    imports models, which this class, loaded with INSTALLED_APPS, may not)."""

    default_site = "broker.admin_site.BrokerAdminSite"

    def ready(self) -> None:
        super().ready()
        # The broker's own checks, registered with the project's one app config of its own.
        from broker import checks  # noqa: F401
