"""Shared fixtures. `store_uri` is parametrised over the store backends, so every engine test that
uses it runs once per backend."""

import pytest


@pytest.fixture(params=["local"])
def store_uri(request, tmp_path) -> str:
    """URI of an empty store of each backend."""
    if request.param == "local":
        return str(tmp_path / "store")
    raise ValueError(request.param)
