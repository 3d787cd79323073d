#!/usr/bin/env python3
"""Build a local base image, and run the built image as a container runtime would; stdlib only.

    python scripts/image_test.py base REF     # debootstrap + import as REF, unless REF exists
    python scripts/image_test.py run IMAGE    # export IMAGE, run it chrooted as its user, check

``base`` makes a Debian bookworm image with python3 and venv from Debian's package archive
(``debootstrap --variant=minbase``) and imports it as REF; an image already stored as REF is
reused. ``run`` needs no daemon and no OCI runtime: the image's filesystem is exported into a
directory, and its entrypoint and command run there with its environment and working directory,
under ``unshare --fork --pid --mount-proc`` (the process is PID 1 of its own PID namespace, as in
a container) and ``chroot --userspec`` (as the image's user), on a read-only root with the
image's volumes and /tmp writable. It checks that nothing is baked in that should not be, that
the user is not root, that ``app db upgrade head`` migrates the SQLite volume, that
``/health/live`` and ``/health`` answer 200 and the HEALTHCHECK passes, that a signup and an
item round trip work, that SIGTERM with a request in flight lets that request finish and exit
0, and that ``app db upgrade head`` run from the image migrates a real PostgreSQL server (the
tests' throwaway one, from ``app.testing.postgres``).

``--engine`` is docker or podman (default: docker where its daemon answers, else podman).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Plain python3 from the project root has neither the venv nor the project on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from app.testing.otlp import OtlpReceiver
from app.testing.postgres import PostgresServer

PROG = "image_test"
SUITE = "bookworm"
PACKAGES = "python3,python3-venv,ca-certificates"
# What Debian's slim images leave out too: package lists and archives, docs, manuals, locales.
TRIMMED = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man")
TRIMMED_CONTENTS = ("usr/share/locale", "usr/share/info")
SCRATCH = "/dev/shm"
SCRATCH_MIN_BYTES = 2 * 1024**3
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0


class CheckFailedError(Exception):
    pass


_STARTED = time.monotonic()


def _log(message: str) -> None:
    print(f"{PROG}: [{time.monotonic() - _STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailedError(message)


def default_engine() -> str:
    docker = shutil.which("docker")
    if docker is None:
        return "podman"
    answers = subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0
    return "docker" if answers else "podman"


def image_exists(engine: str, ref: str) -> bool:
    inspect = [engine, "image", "inspect", ref]
    return subprocess.run(inspect, capture_output=True, check=False).returncode == 0


def build_base(engine: str, ref: str) -> None:
    """REF: Debian bookworm minbase with python3, venv and CA certificates."""
    if image_exists(engine, ref):
        _log(f"base image {ref} is there already: reused")
        return
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="image-base-") as directory:
        rootfs = Path(directory) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(rootfs)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for path in TRIMMED:
            shutil.rmtree(rootfs / path, ignore_errors=True)
            (rootfs / path).mkdir(parents=True, exist_ok=True)
        for path in TRIMMED_CONTENTS:
            for entry in (rootfs / path).glob("*"):
                if entry.is_dir():
                    shutil.rmtree(entry)
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            subprocess.run([engine, "import", "-", ref], stdin=tar.stdout, check=True)
        _check(tar.returncode == 0, "tar of the base filesystem failed")
    _log(f"base image {ref} built in {time.monotonic() - started:.0f} s")


@dataclass
class Image:
    ref: str
    user: str
    env: dict[str, str]
    argv: list[str]
    workdir: str
    healthcheck: list[str]
    volumes: list[str]

    @classmethod
    def inspect(cls, engine: str, ref: str) -> Image:
        output = subprocess.run(
            [engine, "image", "inspect", ref], capture_output=True, text=True, check=True
        ).stdout
        data: dict[str, Any] = json.loads(output)[0]
        config: dict[str, Any] = data["Config"]
        env = dict(entry.partition("=")[::2] for entry in config.get("Env") or [])
        argv = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        # docker shows it in Config, podman beside it.
        test = (config.get("Healthcheck") or data.get("Healthcheck") or {}).get("Test") or []
        healthcheck = test[1:] if test[:1] == ["CMD"] else []
        user = config.get("User") or ""
        workdir = config.get("WorkingDir") or "/"
        volumes = sorted(config.get("Volumes") or {})
        return cls(ref, user, env, argv, workdir, healthcheck, volumes)

    def running(self, argv: list[str]) -> Image:
        """The same image with another command (as ``docker run IMAGE ARGS...``)."""
        return Image(self.ref, self.user, self.env, argv, self.workdir, [], self.volumes)


@dataclass
class RootFS:
    path: Path
    uid: int
    gid: int

    def command(self, argv: Sequence[str], workdir: str) -> list[str]:
        """``argv`` as PID 1 of a new PID namespace, chrooted, as the image's user."""
        return [
            _tool("unshare"),
            "--fork",
            "--pid",
            f"--mount-proc={self.path / 'proc'}",
            _tool("chroot"),
            f"--userspec={self.uid}:{self.gid}",
            str(self.path),
            # The image's own env sets the working directory (chroot always starts at /).
            "env",
            f"--chdir={workdir}",
            *argv,
        ]


@contextlib.contextmanager
def exported(engine: str, image: Image) -> Iterator[RootFS]:
    """The image's filesystem in a temporary directory, as a runtime lays it out."""
    with tempfile.TemporaryDirectory(prefix="image-run-", dir=_scratch()) as directory:
        root = Path(directory) / "rootfs"
        root.mkdir()
        os.chmod(root, 0o755)
        name = f"image-test-{os.getpid()}"
        create = [engine, "create", "--no-healthcheck", "--name", name, image.ref]
        subprocess.run(create, check=True, stdout=subprocess.DEVNULL)
        try:
            with subprocess.Popen([engine, "export", name], stdout=subprocess.PIPE) as export:
                subprocess.run(["tar", "-C", str(root), "-x"], stdin=export.stdout, check=True)
            _check(export.returncode == 0, f"{engine} export failed")
        finally:
            subprocess.run([engine, "rm", name], check=False, stdout=subprocess.DEVNULL)
        (root / "proc").mkdir(exist_ok=True)
        uid, gid = _user_ids(root, image.user)
        yield RootFS(root, uid, gid)


@contextlib.contextmanager
def read_only(rootfs: RootFS, image: Image) -> Iterator[None]:
    """The root filesystem read-only, as Compose's read_only and Kubernetes'
    readOnlyRootFilesystem make it: writable are the image's volumes and a tmpfs on /tmp."""
    root = str(rootfs.path)
    subprocess.run(["mount", "--bind", root, root], check=True)
    try:
        for volume in image.volumes:
            path = f"{root}/{volume.strip('/')}"
            subprocess.run(["mount", "--bind", path, path], check=True)
        tmp = f"{root}/tmp"
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "mode=1777,size=64m", "tmpfs", tmp], check=True
        )
        subprocess.run(["mount", "-o", "remount,bind,ro", root], check=True)
        yield
    finally:
        subprocess.run(["umount", "--recursive", root], check=True)


def _scratch() -> str | None:
    """A tmpfs for the exported filesystem when there is a roomy one: removing its 20,000
    files from a busy disk took 20 s on a shared CI machine, from memory almost nothing."""
    with contextlib.suppress(OSError):
        shm = os.statvfs(SCRATCH)
        if shm.f_bavail * shm.f_frsize > SCRATCH_MIN_BYTES and os.access(SCRATCH, os.W_OK):
            return SCRATCH
    return None


def _user_ids(root: Path, user: str) -> tuple[int, int]:
    """USER as numbers: ``uid[:gid]`` or names, looked up in the image's passwd and group."""
    name, _, group = user.partition(":")
    passwd = {f[0]: f for f in _database(root / "etc/passwd")}
    uid = int(name) if name.isdigit() else int(passwd[name][2])
    if group:
        groups = {f[0]: f for f in _database(root / "etc/group")}
        return uid, int(group) if group.isdigit() else int(groups[group][2])
    by_uid = {int(f[2]): f for f in passwd.values()}
    return uid, int(by_uid[uid][3]) if uid in by_uid else uid


def _database(path: Path) -> list[list[str]]:
    return [line.split(":") for line in path.read_text().splitlines() if line.count(":") >= 3]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise CheckFailedError(f"{name} is not installed")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Container:
    """The image's command running chrooted; ``pid1`` is what a runtime signals."""

    def __init__(self, rootfs: RootFS, image: Image, env: dict[str, str], log: Path) -> None:
        self.log = log
        environ = {"HOME": "/", **image.env, **env}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                rootfs.command(image.argv, image.workdir),
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.pid1 = self._child()

    def _child(self) -> int:
        deadline = time.monotonic() + 10
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if text := children.read_text().split():
                    return int(text[0])
            _check(self.process.poll() is None, f"unshare exited: {self.tail()}")
            time.sleep(0.02)
        raise CheckFailedError("unshare started no child")

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """SIGTERM to PID 1, as ``docker stop`` does; its exit code."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid1, signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise CheckFailedError(f"no exit {STOP_TIMEOUT_S:.0f} s after SIGTERM") from None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


def request(port: int, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body)
        connection.request(method, path, payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def wait_until_live(container: Container, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError):
            if request(port, "GET", "/health/live")[0] == 200:
                return
        _check(container.running(), f"the server exited:\n{container.tail()}")
        _check(time.monotonic() < deadline, f"no /health/live:\n{container.tail()}")
        time.sleep(0.1)


def check_serving(rootfs: RootFS, image: Image, work: Path) -> None:
    port = _free_port()
    receiver = OtlpReceiver()  # the image has the otel extra: traces go to it, as configured
    # Migrated beforehand, as in production: no create_all at startup.
    env = {
        "PORT": str(port),
        "CREATE_SCHEMA": "false",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "image-test",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    container = Container(rootfs, image, env, work / "serve.log")
    try:
        wait_until_live(container, port)
        status = Path(f"/proc/{container.pid1}/status").read_text()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        _check(uid == str(rootfs.uid), f"PID 1 runs as uid {uid}")
        _log(f"serving on PORT={port} as PID 1 of its namespace, uid {uid}: /health/live 200")
        _check(request(port, "GET", "/health")[0] == 200, "/health is not 200")
        _log("/health 200 (the SQLite database answers)")
        check_healthcheck(rootfs, image, port, work)

        user_status, user = request(
            port, "POST", "/users/", {"email": "image@example.com", "password": "s3cret-pw"}
        )
        _check(user_status == 200, f"signup: {user_status} {user}")
        item = {"title": "Pen", "description": "blue"}
        item_status, created = request(port, "POST", f"/users/{user['id']}/items/", item)
        _check(item_status == 200, f"item: {item_status} {created}")
        read_status, read = request(port, "GET", f"/users/{user['id']}")
        _check(read_status == 200 and read["items"] == [created], f"round trip: {read}")
        database = _volume_database(rootfs, image)
        _check(database.stat().st_uid == rootfs.uid, f"{database} is not the user's")
        _log(f"signup and item round trip on {database.relative_to(rootfs.path)}")
        route = "POST /users/{user_id}/items/"
        spans = receiver.wait_for(lambda spans: any(s.name == route for s in spans), 30)
        services = {s.resource.get("service.name") for s in spans}
        _check(services == {"image-test"}, f"spans from {services}")
        _log(f"traces exported over OTLP/HTTP: {len(spans)} spans, among them {route!r}")

        check_in_flight_sigterm(container, port, database)
    finally:
        if container.running():
            container.stop()
        receiver.stop()


def check_healthcheck(rootfs: RootFS, image: Image, port: int, work: Path) -> None:
    """The image's HEALTHCHECK command, run in the container as a runtime would."""
    _check(bool(image.healthcheck), "the image has no HEALTHCHECK CMD")
    probe = Container(rootfs, image.running(image.healthcheck), {"PORT": str(port)}, work / "hc")
    code = probe.process.wait(30)
    _check(code == 0, f"HEALTHCHECK exited {code}:\n{probe.tail()}")
    _log(f"HEALTHCHECK {image.healthcheck[0]} ... exits 0")


def check_nothing_baked_in(rootfs: RootFS, image: Image) -> None:
    """No build secret, settings file or database in the image; no pip to install with."""
    root = rootfs.path
    workdir = root / image.workdir.lstrip("/")
    _check(
        not (root / "run/secrets").exists() or not any((root / "run/secrets").iterdir()),
        "the image holds /run/secrets",
    )
    _check(not any(workdir.iterdir()), f"{image.workdir} is not empty: {list(workdir.iterdir())}")
    volume = _volume_database(rootfs, image).parent
    _check(not any(volume.iterdir()), f"{volume.relative_to(root)} is not empty")
    _check(not any(name.startswith("PIP_") for name in image.env), "PIP_* in the image's env")
    _check(not list(root.glob("opt/venv/bin/pip*")), "pip is in the image")
    _log("no secret, .env, config.yml, database or pip in the image")


def _volume_database(rootfs: RootFS, image: Image) -> Path:
    url = image.env.get("DATABASE_URL", "")
    _check(url.startswith("sqlite:////"), f"DATABASE_URL is not an absolute SQLite path: {url}")
    return rootfs.path / url.removeprefix("sqlite:////")


def check_in_flight_sigterm(container: Container, port: int, database: Path) -> None:
    """A signup whose body is not sent yet at SIGTERM still commits and answers, then exit 0.

    ``Expect: 100-continue`` makes the request observable: the server answers 100 Continue
    when the app starts reading the body, so SIGTERM comes while the app is surely in it."""
    body = json.dumps({"email": "in-flight@example.com", "password": "s3cret-pw"}).encode()
    head = (
        f"POST /users/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(head)
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = client.recv(1024)
            _check(bool(chunk), f"closed before 100 Continue: {interim!r}")
            interim += chunk
        _check(interim.split()[1:2] == [b"100"], f"no 100 Continue: {interim!r}")
        signalled = time.monotonic()
        os.kill(container.pid1, signal.SIGTERM)
        time.sleep(1.0)
        _check(container.running(), f"exited with a request in flight:\n{container.tail()}")
        client.sendall(body)
        response = client.makefile("rb").readline()
    _check(response.split()[1:2] == [b"200"], f"the request in flight got {response!r}")
    try:
        code = container.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CheckFailedError("still running after its request in flight") from None
    _check(code == 0, f"exit code {code} after SIGTERM:\n{container.tail()}")
    with contextlib.closing(sqlite3.connect(database)) as db:
        emails = {email for (email,) in db.execute("SELECT email FROM users")}
    _check("in-flight@example.com" in emails, "the request in flight did not commit")
    _log(
        f"SIGTERM with a request in flight: it answered 200 and committed, exit 0 "
        f"{time.monotonic() - signalled:.1f} s after the signal"
    )


def run_once(rootfs: RootFS, image: Image, args: list[str], env: dict[str, str], log: Path) -> str:
    """``docker run IMAGE ARGS``: the entrypoint with other arguments, to completion."""
    container = Container(rootfs, image.running([*image.argv[:1], *args]), env, log)
    try:
        code = container.process.wait(120)
    except subprocess.TimeoutExpired:
        container.stop()
        raise CheckFailedError(f"{' '.join(args)} did not finish") from None
    _check(code == 0, f"{' '.join(args)} exited {code}:\n{container.tail()}")
    return log.read_text()


def check_sqlite_migration(rootfs: RootFS, image: Image, work: Path) -> None:
    """What the sqlite-single overlay's init container does before the server starts."""
    run_once(rootfs, image, ["db", "upgrade", "head"], {}, work / "sqlite-upgrade.log")
    current = run_once(rootfs, image, ["db", "current"], {}, work / "sqlite-current.log")
    _check("(head)" in current, f"the volume's SQLite is not at head: {current}")
    _log(f"app db upgrade head migrated the volume's SQLite: {current.strip()}")


def check_migration(rootfs: RootFS, image: Image, work: Path, server: PostgresServer) -> None:
    env = {"DATABASE_URL": server.url("app")}
    run_once(rootfs, image, ["db", "upgrade", "head"], env, work / "upgrade.log")
    current = run_once(rootfs, image, ["db", "current"], env, work / "current.log")
    _check("(head)" in current, f"not at head after the upgrade: {current}")
    _log(f"app db upgrade head from the image migrated PostgreSQL: {current.strip()}")


class Background(threading.Thread):
    """A throwaway PostgreSQL server, started while the image is exported and served."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.server: PostgresServer | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.server = PostgresServer.create(databases=["app"], wal_level_replica=False)
        except BaseException as error:
            self.error = error

    def result(self) -> PostgresServer:
        self.join()
        if self.error is not None:
            raise self.error
        assert self.server is not None
        return self.server


def run(engine: str, ref: str) -> None:
    started = time.monotonic()
    postgres = Background()
    try:
        image = Image.inspect(engine, ref)
        _check(bool(image.user), "the image sets no USER: it would run as root")
        with exported(engine, image) as rootfs, tempfile.TemporaryDirectory() as work:
            _log(f"exported {ref} into {rootfs.path}")
            _check(rootfs.uid != 0, f"USER {image.user} is root")
            check_nothing_baked_in(rootfs, image)
            _log(f"{ref}: USER {image.user} (uid {rootfs.uid}), command {image.argv}")
            with read_only(rootfs, image):
                _log(f"root filesystem read-only; writable: {', '.join(image.volumes)}, /tmp")
                check_sqlite_migration(rootfs, image, Path(work))
                check_serving(rootfs, image, Path(work))
                check_migration(rootfs, image, Path(work), postgres.result())
    finally:
        with contextlib.suppress(BaseException):
            postgres.result().close()
    _log(f"every check passed in {time.monotonic() - started:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image_test.py", description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("docker", "podman"), help="default: see above")
    commands = parser.add_subparsers(dest="command", required=True)
    base = commands.add_parser("base", help="build the local base image REF unless it exists")
    base.add_argument("ref")
    commands.add_parser("run", help="run IMAGE chrooted and check it").add_argument("ref")
    args = parser.parse_args(argv)
    engine = args.engine or default_engine()
    try:
        if args.command == "base":
            build_base(engine, args.ref)
        else:
            run(engine, args.ref)
    except (CheckFailedError, subprocess.CalledProcessError, RuntimeError) as error:
        # RuntimeError: the PostgreSQL harness could not start a server.
        _log(f"FAILED: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
