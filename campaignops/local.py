"""Local services for the embedded default: the Prefect server and the ESP sandbox."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from campaignops.errors import CampaignOpsError, ServiceError
from campaignops.settings import Settings

PREFECT_PORT = 4200
SANDBOX_PORT = 8765


def prefect_api_url(port: int = PREFECT_PORT) -> str:
    """The local Prefect server's API address."""
    return f"http://127.0.0.1:{port}/api"


def prefect_ui_url(port: int = PREFECT_PORT) -> str:
    """The local Prefect server's UI address (the V2 UI)."""
    return f"http://127.0.0.1:{port}/v2"


def _healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def server_running(port: int = PREFECT_PORT) -> bool:
    """True when a Prefect server answers on the local port."""
    return _healthy(f"{prefect_api_url(port)}/health")


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on host:port (a bind would fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_busy(what: str, port: int, fix: str) -> ServiceError:
    """The one-line error for a port something else already uses."""
    return ServiceError(f"port {port} is already in use by something that is not {what}: "
                        f"pick a free one with {fix}")


def prefect_environment(settings: Settings) -> dict[str, str]:
    """Environment for Prefect: our own PREFECT_HOME, offline, local server when one runs."""
    env = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    if "PREFECT_HOME" not in os.environ:
        env["PREFECT_HOME"] = str(settings.prefect_home)
    if "PREFECT_API_URL" not in os.environ and server_running(settings.prefect_port):
        env["PREFECT_API_URL"] = prefect_api_url(settings.prefect_port)
        # links (Prefect's "View at" line, artifacts) open the V2 UI, whose approval form
        # masks the key; the V1 form shows it as typed
        if "PREFECT_UI_URL" not in os.environ:
            env["PREFECT_UI_URL"] = prefect_ui_url(settings.prefect_port)
    return env


def apply_prefect_environment(settings: Settings) -> None:
    """Set Prefect's environment in this process (before prefect is imported).

    With ``prefect_server: auto`` (the default) and no ``PREFECT_API_URL``, the local server
    is started in the background first unless it runs, and left running: each later command
    reuses it instead of paying for a temporary server (about 10 s) every time.
    """
    if (settings.prefect_server == "auto" and "PREFECT_API_URL" not in os.environ
            and start_server(settings)):
        print(f"started the local Prefect server at {prefect_ui_url(settings.prefect_port)} "
              "(it keeps running for the next commands; `campaignops server stop` stops it)",
              file=sys.stderr)
    os.environ.update(prefect_environment(settings))


def _pidfile(settings: Settings, name: str) -> Path:
    return settings.home.resolve() / "run" / f"{name}.pid"


def _spawn(settings: Settings, name: str, argv: list[str], env: dict[str, str]) -> int:
    logdir = settings.home.resolve() / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    pidfile = _pidfile(settings, name)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logdir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env}, start_new_session=True)
    pidfile.write_text(str(proc.pid))
    return proc.pid


def _wait_healthy(url: str, seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _healthy(url):
            return
        time.sleep(0.5)
    raise CampaignOpsError(f"{what} did not become healthy in {seconds:.0f} s: see {log}")


def start_server(settings: Settings, port: int | None = None) -> bool:
    """Start the local Prefect server unless one runs; True when this call started it."""
    port = port or settings.prefect_port
    if server_running(port):
        return False
    if port_taken(port):
        raise port_busy("a Prefect server", port, "--port (or CAMPAIGNOPS_PREFECT_PORT)")
    env = prefect_environment(settings)
    env.pop("PREFECT_API_URL", None)
    _spawn(settings, "prefect-server",
           [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
            "--port", str(port)], env)
    _wait_healthy(f"{prefect_api_url(port)}/health", 120, "the Prefect server",
                  settings.home.resolve() / "logs" / "prefect-server.log")
    return True


def sandbox_token_file(settings: Settings) -> Path:
    """Where the local sandbox's token lives: esp-sandbox.token in the home (mode 600)."""
    return settings.home.resolve() / "esp-sandbox.token"


def sandbox_token(settings: Settings) -> str:
    """The local sandbox's token, made once and kept (mode 600) under home."""
    path = sandbox_token_file(settings)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    path.write_text(token)
    path.chmod(0o600)
    return token


def sandbox_running(url: str) -> bool:
    """True when an ESP sandbox answers at url."""
    return _healthy(f"{url.rstrip('/')}/healthz")


def start_sandbox(settings: Settings, port: int = SANDBOX_PORT) -> tuple[str, bool]:
    """Start the ESP sandbox on loopback unless it runs; (url, started by this call)."""
    url = f"http://127.0.0.1:{port}"
    if sandbox_running(url):
        return url, False
    if port_taken(port):
        raise port_busy("the ESP sandbox", port, "--sandbox-port (demo) or --port (esp-sandbox)")
    token = sandbox_token(settings)
    db = settings.home.resolve() / "esp-sandbox.db"
    _spawn(settings, "esp-sandbox",
           [sys.executable, "-m", "campaignops.cli", "esp-sandbox", "--port", str(port),
            "--db", str(db)], {"CAMPAIGNOPS_ESP_TOKEN": token})
    _wait_healthy(f"{url}/healthz", 30, "the ESP sandbox",
                  settings.home.resolve() / "logs" / "esp-sandbox.log")
    return url, True


def stop_all(settings: Settings) -> list[str]:
    """Stop the services this home started; the names of those stopped."""
    stopped = []
    for name in ("esp-sandbox", "prefect-server"):
        pidfile = _pidfile(settings, name)
        if not pidfile.exists():
            continue
        pid = int(pidfile.read_text().strip() or 0)
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                os.killpg(pid, 0)
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            pass
        pidfile.unlink(missing_ok=True)
        stopped.append(name)
    return stopped
