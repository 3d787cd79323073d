"""/docs and /redoc work offline: local assets, and Swagger UI really renders in Chromium."""

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import app
from app.testing import routes
from app.testing.server import LiveServer

pytestmark = pytest.mark.any_backend  # the documentation pages read no table

SHARES_SERVERS = True  # module-scoped: under xdist, its tests run on one worker

CHROMIUM = "/usr/bin/chromium"
ASSET = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "json"}


def asset_urls(html: str) -> list[str]:
    return [a or b for a, b in ASSET.findall(html)]


@pytest.mark.parametrize(
    ("page", "essential"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "openapi.json"}),
        ("/redoc", {"redoc.standalone.js", "openapi.json"}),
    ],
)
def test_docs_pages_use_only_local_assets(
    client: TestClient, page: str, essential: set[str]
) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "http://" not in response.text
    assert "https://" not in response.text
    urls = asset_urls(response.text)
    assert essential <= {Path(url).name for url in urls}, urls
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        assert not url.startswith("//"), f"{page} loads {url} from another host"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0, url
        suffix = Path(url).suffix
        if suffix in CONTENT_TYPES:
            assert CONTENT_TYPES[suffix] in asset.headers["content-type"], url


def operations() -> set[tuple[str, str]]:
    """(method, path template) of every operation the app serves, read off the app."""
    return {(m.lower(), str(r.path)) for r in routes.api_routes(app) for m in r.methods or ()}


def test_openapi_describes_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    described = {(method, path) for path, ops in paths.items() for method in ops}
    assert described == operations()
    assert ("post", "/users/") in described  # the derivation is not empty
    for ops in paths.values():
        for operation in ops.values():
            assert operation["description"], operation["operationId"]
    user = client.get("/openapi.json").json()["components"]["schemas"]["UserRead"]
    assert "password" not in str(user)
    assert "hashed_password" not in str(user)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    database = tmp_path_factory.mktemp("docs") / "app.db"
    with LiveServer({"DATABASE_URL": f"sqlite:///{database}"}) as server:
        yield server


def render(url: str, profile: Path) -> str:
    """The DOM of ``url`` after headless Chromium ran its scripts."""
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`, "
            "as .ci/run does) to test that /docs renders offline"
        )
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_swagger_ui_renders_the_operations_offline(live_server: LiveServer, tmp_path: Path) -> None:
    dom = render(f"{live_server.url}/docs", tmp_path / "profile")
    served = operations()
    for _, path in served:
        assert f'data-path="{path}"' in dom, f"Swagger UI did not render {path}"
    for method in {method for method, _ in served}:
        expected = sum(1 for m, _ in served if m == method)
        assert dom.count(f'class="opblock opblock-{method}') == expected, method
    log = live_server.log_text()
    assert '"GET /static-offline-docs/swagger-ui-bundle.js HTTP/1.1" 200' in log
    assert '"GET /openapi.json HTTP/1.1" 200' in log


def test_redoc_renders_the_operations_offline(live_server: LiveServer, tmp_path: Path) -> None:
    dom = render(f"{live_server.url}/redoc", tmp_path / "profile")
    for ops in app.openapi()["paths"].values():
        for operation in ops.values():
            op_id = operation["operationId"]
            assert f'id="operation/{op_id}"' in dom, f"ReDoc did not render {op_id}"
            assert operation["description"] in dom, op_id
    assert '"GET /static-offline-docs/redoc.standalone.js HTTP/1.1" 200' in live_server.log_text()
