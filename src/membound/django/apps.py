"""The Django app of membound: add ``"membound.django"`` to ``INSTALLED_APPS`` for the
``membound_export`` management command. The functions work without it."""

from __future__ import annotations

from django.apps import AppConfig


class MemboundConfig(AppConfig):
    name = "membound.django"
    # Not "django": that label would read as Django's own.
    label = "membound"
    verbose_name = "membound"
