"""Models of the test project: one per primary-key type, plus relations and large values."""

from __future__ import annotations

import uuid

from django.db import models


class Group(models.Model):
    name = models.CharField(max_length=40)


class IntItem(models.Model):
    name = models.CharField(max_length=40)
    rank = models.IntegerField(null=True)
    score = models.FloatField(null=True)
    group = models.ForeignKey(Group, null=True, on_delete=models.CASCADE, related_name="items")


class UUIDItem(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.CharField(max_length=40)
    rank = models.IntegerField(null=True)


class StrItem(models.Model):
    code = models.CharField(primary_key=True, max_length=40)
    name = models.CharField(max_length=40)
    rank = models.IntegerField(null=True)


class Document(models.Model):
    title = models.CharField(max_length=40)
    body = models.BinaryField(null=True)
    text = models.TextField(null=True)


class Event(models.Model):
    """The bench's ``events`` row (shared/BENCHMARKS.md)."""

    user_id = models.IntegerField()
    ts = models.DateTimeField()
    kind = models.CharField(max_length=10)
    amount = models.FloatField(null=True)
    payload = models.TextField(null=True)
    flag = models.BooleanField(null=True)


class Stamped(models.Model):
    """A field with its own pre_save (auto_now_add): bulk_create must go through Django."""

    name = models.CharField(max_length=40)
    created = models.DateTimeField(auto_now_add=True)


class Defaulted(models.Model):
    """A database default (db_default): bulk_create must go through Django."""

    name = models.CharField(max_length=40)
    rank = models.IntegerField(db_default=7)
