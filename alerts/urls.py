from django.urls import path

from alerts import views

# Included at "settings/alerts" (adsync/urls.py): one page, whose forms name the workspace.
urlpatterns = [
    path("", views.alert_settings_page, name="alerts-settings"),
]
