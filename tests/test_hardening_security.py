"""Security: admin authentication, the body size limit, secrets in logs, unpickling.

- Admin auth over ASGI: no token, wrong tokens (prefix, superset, same length, other case),
  wrong schemes, the token anywhere but the header: 401 with a Bearer challenge; the admin API
  disabled (403 saying how to enable it) when no token is configured, whatever is sent; the
  auth decision comes before the body is even parsed.
- Constant time: the comparison in app/api/auth.py goes through hmac/secrets.compare_digest
  (checked on the AST: no ==/!= on the secret) and, at run time, every admin request reaches
  compare_digest with the token's bytes.
- The body size limit on a real server: 413 for a declared Content-Length over the limit and for
  a chunked body without Content-Length, before the body is all read; under the limit is fine.
- The token never appears in the log of a real server (debug level, access log on) that served
  authorized and unauthorized admin calls, nor in the error of a refused start.
- No model loading path unpickles: no torch.load / pickle & co. anywhere in app/ and models/
  (AST walk), and a booby-trapped pickle as checkpoint or profile is never executed.
- Non-root container: tests/test_deploy_dockerfile.py::test_runs_as_a_non_root_user_it_creates
  checks the final stage's USER (not duplicated here).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import hmac
import inspect
import json
import os
import pickle
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from app_support import ADMIN_CALLS, wait_ready
from fastapi.testclient import TestClient
from server_process import SidecarProcess
from test_hardening_support import assert_envelope

import app.api.auth as auth_module
from app.settings import load_settings
from models import default_model_path
from tests.front_end_support import make_app

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-" + secrets.token_hex(12)
AUTH = {"Authorization": f"Bearer {SECRET}"}
WRONG_AUTHORIZATIONS = [
    pytest.param(None, id="no-header"),
    pytest.param("", id="empty"),
    pytest.param("Bearer", id="scheme-only"),
    pytest.param("Bearer ", id="scheme-and-space"),
    pytest.param("Bearer wrong", id="wrong"),
    pytest.param("Bearer " + SECRET[:-1], id="prefix"),
    pytest.param("Bearer " + SECRET + "x", id="superset"),
    pytest.param("Bearer " + SECRET[:-1] + "X", id="same-length"),
    pytest.param("Bearer " + SECRET.upper(), id="other-case"),
    pytest.param(SECRET, id="no-scheme"),
    pytest.param("Basic " + SECRET, id="basic-scheme"),
    pytest.param("Basic " + base64.b64encode(f"admin:{SECRET}".encode()).decode(), id="basic"),
    pytest.param("Token " + SECRET, id="token-scheme"),
    pytest.param("Bearer " + SECRET + " extra", id="trailing-words"),
    pytest.param("Bearer \u00fc\u00ef".encode(), id="utf8-bytes"),
    pytest.param(b"Bearer \xff\xfe", id="not-utf8"),
]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = load_settings(model_path="toy", admin_token=SECRET)
    with TestClient(make_app(settings), raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


# --------------------------------------------------------------------------- admin auth
@pytest.mark.parametrize("authorization", WRONG_AUTHORIZATIONS)
@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
def test_admin_refuses_a_wrong_authorization(
    client: TestClient, method: str, path: str, authorization: str | bytes | None
) -> None:
    headers: Any = {} if authorization is None else {"Authorization": authorization}
    resp = client.request(method, path, headers=headers)
    message = assert_envelope(resp, 401, "unauthorized")
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert SECRET not in message and SECRET not in resp.text


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
def test_admin_accepts_the_token(client: TestClient, method: str, path: str) -> None:
    assert client.request(method, path, headers=AUTH).status_code == 200
    # The scheme is case-insensitive (RFC 9110), the token is not.
    lower = {"Authorization": f"bearer {SECRET}"}
    assert client.request(method, path, headers=lower).status_code == 200


def test_the_token_only_counts_in_the_header(client: TestClient) -> None:
    for name in ("token", "access_token", "admin_token"):
        resp = client.get("/admin/stats", params={name: SECRET})
        assert_envelope(resp, 401, "unauthorized")
    resp = client.get("/admin/stats", headers={"X-Admin-Token": SECRET, "X-Api-Key": SECRET})
    assert_envelope(resp, 401, "unauthorized")
    client.cookies.set("Authorization", f"Bearer {SECRET}")
    try:
        assert_envelope(client.get("/admin/stats"), 401, "unauthorized")
    finally:
        client.cookies.clear()


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"shapes": [{"batch_size": -1, "seq_len": 8}]}', b"[" * 50_000, b""],
    ids=["invalid-json", "invalid-shape", "deep-nesting", "empty"],
)
def test_auth_is_decided_before_the_body_is_parsed(client: TestClient, body: bytes) -> None:
    """Without the token the answer is 401 whatever the body: an outsider learns nothing from
    the admin routes' parser or validation."""
    headers = {"content-type": "application/json"}
    assert_envelope(
        client.post("/admin/prewarm", content=body, headers=headers), 401, "unauthorized"
    )
    with TestClient(make_app(load_settings(model_path="toy"))) as disabled:
        resp = disabled.post("/admin/prewarm", content=body, headers={**headers, **AUTH})
        assert_envelope(resp, 403, "admin_disabled")


@pytest.mark.parametrize("configured", [None, "", "   "], ids=["unset", "empty", "blank"])
@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
def test_admin_disabled_without_a_token(configured: str | None, method: str, path: str) -> None:
    overrides: dict[str, Any] = {} if configured is None else {"admin_token": configured}
    with TestClient(make_app(load_settings(model_path="toy", **overrides))) as c:
        for headers in ({}, AUTH, {"Authorization": "Bearer "}):
            message = assert_envelope(
                c.request(method, path, headers=headers), 403, "admin_disabled"
            )
            assert "SIDECAR_ADMIN_TOKEN" in message


# --------------------------------------------------------------------------- constant time
def _secret_names(func: ast.FunctionDef) -> set[str]:
    """Names assigned from an expression that reads the secret (get_secret_value())."""
    names: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and "get_secret_value" in ast.unparse(node.value):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_the_token_is_compared_with_compare_digest_only() -> None:
    tree = ast.parse(inspect.getsource(auth_module))
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    readers = [f for f in funcs if "get_secret_value" in ast.unparse(f)]
    assert readers, "no function of app/api/auth.py reads the token"
    for func in readers:
        secret = _secret_names(func)
        calls = [
            n
            for n in ast.walk(func)
            if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("compare_digest")
        ]
        assert calls, f"{func.name} reads the token but never calls compare_digest"
        for call in calls:  # the secret is one of compare_digest's arguments
            args = " ".join(ast.unparse(a) for a in call.args)
            assert "get_secret_value" in args or any(name in args for name in secret)
        for node in ast.walk(func):
            if isinstance(node, ast.Compare):
                text = ast.unparse(node)
                leaks = "get_secret_value" in text or any(
                    isinstance(n, ast.Name) and n.id in secret for n in ast.walk(node)
                )
                assert not leaks, f"{func.name} compares the token with an operator: {text}"


def test_every_admin_request_goes_through_compare_digest(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = hmac.compare_digest
    seen: list[tuple[Any, Any]] = []

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    monkeypatch.setattr(secrets, "compare_digest", spy)
    for name, value in vars(auth_module).items():  # `from hmac import compare_digest` too
        if value is real:
            monkeypatch.setattr(auth_module, name, spy)
    assert client.get("/admin/stats", headers=AUTH).status_code == 200
    assert client.get("/admin/stats", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert len(seen) >= 2
    secret_bytes = SECRET.encode()
    for a, b in seen:
        assert secret_bytes in (a, b) or SECRET in (a, b), "compared something else"


# --------------------------------------------------------------------------- real server
SERVER_ENV = {
    "SIDECAR_MODEL_PATH": "toy",
    "SIDECAR_ADMIN_TOKEN": SECRET,
    "SIDECAR_LOG_LEVEL": "debug",  # as much logging as there can be
    "SIDECAR_ACCESS_LOG": "true",
    "SIDECAR_MAX_BODY_BYTES": "4096",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    with SidecarProcess(SERVER_ENV, tmp_path_factory.mktemp("security") / "server.log") as proc:
        proc.wait_ready()
        yield proc


def _raw_http(port: int, head: bytes, body_parts: list[bytes]) -> tuple[int, bytes]:
    """Send a request by hand; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed early: what a limit should do
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _expected_len(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_text, _, body = data.partition(b"\r\n\r\n")
    return int(head_text.split(b" ")[1]), body


def _expected_len(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return len(data) + 1


def _chunked(parts: list[bytes]) -> list[bytes]:
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts] + [b"0\r\n\r\n"]


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/infer", "/v1/embeddings", "/admin/prewarm"])
def test_body_limit_on_a_real_server(server: SidecarProcess, path: str) -> None:
    big = json.dumps({"inputs": ["word " * 200] * 8}).encode()  # ~8 kB > 4096
    assert len(big) > 4096
    auth = f"Authorization: Bearer {SECRET}\r\n".encode() if path.startswith("/admin") else b""
    start = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
    # Declared Content-Length over the limit: refused before reading the body.
    status, body = _raw_http(
        server.port, start + auth + f"Content-Length: {len(big)}\r\n\r\n".encode(), [big]
    )
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    # Chunked, no Content-Length: refused once the bytes received pass the limit.
    parts = [big[i : i + 1000] for i in range(0, len(big), 1000)]
    head = start + auth + b"Transfer-Encoding: chunked\r\n\r\n"
    status, body = _raw_http(server.port, head, _chunked(parts))
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    # Under the limit, chunked: served.
    small = json.dumps({"inputs": ["fits"]} if path == "/infer" else {"input": "fits"}).encode()
    if path == "/admin/prewarm":
        small = json.dumps({"shapes": [{"batch_size": 1, "seq_len": 8}]}).encode()
    status, body = _raw_http(server.port, head, _chunked([small[:5], small[5:]]))
    assert status == 200, body


def _admin_traffic(url: str) -> None:
    """Authorized and unauthorized calls to every admin route, and a 422 carrying the token."""
    with httpx.Client(base_url=url, timeout=30) as c:
        for method, path in ADMIN_CALLS:
            assert c.request(method, path, headers=AUTH).status_code == 200
            for wrong in ("Bearer " + SECRET + "x", "Basic " + SECRET, SECRET, "Bearer nope"):
                assert c.request(method, path, headers={"Authorization": wrong}).status_code == 401
        body = {"shapes": [{"batch_size": 2, "seq_len": 8}]}
        assert c.post("/admin/prewarm", json=body, headers=AUTH).status_code == 200
        bad = {"shapes": [{"batch_size": -1, "seq_len": 8}], "note": SECRET}
        assert c.post("/admin/prewarm", json=bad, headers=AUTH).status_code == 422


@pytest.mark.slow
def test_the_token_never_reaches_the_log(tmp_path: Path) -> None:
    server = SidecarProcess(SERVER_ENV, tmp_path / "server.log")  # its own: it is stopped here
    try:
        server.wait_ready()
        _admin_traffic(server.url)
    finally:
        code = server.stop()
    log = server.log_text()
    assert code == 0
    assert "GET /admin/stats" in log, "the access log is on: requests must be in it"
    assert "'admin_token': 'set'" in log or '"admin_token": "set"' in log, "settings not logged"
    forms = {SECRET, base64.b64encode(SECRET.encode()).decode(), SECRET[4:-4]}
    for form in forms:
        assert form not in log, f"the token ({form[:6]}...) appears in the server log"

    # A refused start (a bad setting next to the token) does not print it either.
    env = {**os.environ, "SIDECAR_ADMIN_TOKEN": SECRET, "SIDECAR_MAX_QUEUE": "zero"}
    proc = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "SIDECAR_MAX_QUEUE" in proc.stderr, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- unpickling
UNPICKLERS = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "joblib",
    "shelve",
    "marshal",
}


def _python_files() -> list[Path]:
    return sorted(p for d in ("app", "models") for p in (REPO / d).rglob("*.py"))


def test_no_loading_path_can_unpickle() -> None:
    problems: list[str] = []
    for file in _python_files():
        tree = ast.parse(file.read_text(), filename=str(file))
        where = file.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in UNPICKLERS:
                        problems.append(f"{where}:{node.lineno} import {alias.name}")
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if module.split(".")[0] in UNPICKLERS:
                    problems.append(f"{where}:{node.lineno} from {module} import ...")
                if module.startswith("torch") and any(
                    a.name in ("load", "serialization") for a in node.names
                ):
                    problems.append(f"{where}:{node.lineno} from {module} import load")
            elif isinstance(node, ast.Call):
                func = ast.unparse(node.func)
                if func in ("torch.load", "torch.jit.load", "torch.serialization.load"):
                    problems.append(f"{where}:{node.lineno} {func}()")
                if func.endswith(("np.load", "numpy.load")):
                    problems.append(f"{where}:{node.lineno} {func}() (allow_pickle)")
                if any(k.arg == "allow_pickle" for k in node.keywords):
                    problems.append(f"{where}:{node.lineno} allow_pickle=")
            elif isinstance(node, ast.Attribute) and ast.unparse(node) in (
                "torch.load",
                "torch.serialization",
            ):
                problems.append(f"{where}:{node.lineno} {ast.unparse(node)}")
    assert len(_python_files()) > 20
    assert not problems, "\n".join(problems)
    # The one loading path (the model's and the pipeline modules' weights) reads safetensors.
    weights = (REPO / "models" / "weights.py").read_text()
    assert "from safetensors" in weights
    loaders = [f for f in (REPO / "models").glob("*.py") if "load_file" in f.read_text()]
    assert loaders == [REPO / "models" / "weights.py"], loaders


class _Trap:
    """Unpickling this creates `marker` (what an attacker's checkpoint would do, harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("as_name", ["pytorch_model.bin", "model.safetensors"])
def test_a_booby_trapped_checkpoint_is_never_unpickled(tmp_path: Path, as_name: str) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(default_model_path(), model_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "pwned"
    (model_dir / as_name).write_bytes(pickle.dumps({"weights": _Trap(marker)}))
    app = make_app(load_settings(model_path=str(model_dir)))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(Exception, match="model.safetensors"):
        asyncio.run(start())
    assert not marker.exists(), "the checkpoint was unpickled"


def test_a_booby_trapped_profile_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    profile = tmp_path / "profile.json"
    profile.write_bytes(pickle.dumps(_Trap(marker)))
    settings = load_settings(model_path="toy", profile_path=str(profile))
    with TestClient(make_app(settings)) as c:
        wait_ready(c)  # the bad profile is ignored, not fatal
        assert c.post("/infer", json={"inputs": ["ok"]}).status_code == 200
    assert not marker.exists(), "the profile was unpickled"
