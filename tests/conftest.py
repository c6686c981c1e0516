"""Shared fixtures: every test gets its own export cache; nothing touches the network."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ATTNVIS_CACHE", str(tmp_path_factory.getbasetemp() / "attnvis-cache"))
