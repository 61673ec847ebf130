from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from avatar.config import Settings, load_settings
from avatar.server.engines import Engines

os.environ.setdefault("HF_HUB_OFFLINE", "1")

API_TOKEN = "test-token-0123456789"


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    # The echo driver says the customer's words back: media tests need no brain.
    base: dict[str, object] = {"data_dir": data_dir, "api_token": API_TOKEN, "driver": "echo"}
    return load_settings(env={}, overrides={**base, **overrides})


@pytest.fixture(scope="session")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    """One set of engines for the whole run (loading voices costs seconds)."""
    built = Engines.build(make_settings(tmp_path_factory.mktemp("engines")))
    yield built
    built.close()


@pytest.fixture
async def client(
    aiohttp_client: object, engines: Engines, tmp_path: Path
) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    from avatar.server.app import create_app

    settings = make_settings(tmp_path, max_sessions=3, max_body_bytes=16 * 1024)
    app = create_app(settings, engines=engines)
    yield await aiohttp_client(app)  # type: ignore[operator]


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit and integration tests first, real-browser tests last (slowest, and Playwright's sync
    API must not be open while asyncio tests run)."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)
