"""Shared fixtures: unique table names, removed after each test."""
from __future__ import annotations

import os
import uuid

import pytest

import shmdict


@pytest.fixture
def name(request):
    """A fresh table name; the table (if any) is unlinked after the test."""
    table_name = f"test.{os.getpid()}.{uuid.uuid4().hex[:12]}"
    yield table_name
    shmdict.unlink(table_name)


@pytest.fixture
def counter(name):
    table = shmdict.open(name, shmdict.Counter(), capacity=1000)
    yield table
    table.close()
