"""Shared fixtures: the whole test session uses its own export cache; nothing touches the network."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # session scope: set before any module-scoped fixture opens a model (those would write to ~/.cache)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATTNVIS_CACHE", str(tmp_path_factory.getbasetemp() / "attnvis-cache"))
        yield
