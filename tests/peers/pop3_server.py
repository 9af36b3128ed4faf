"""Run mailprov's POP3 service for tests: in a background thread (fast) or as ``mailprov serve pop3``.

Reusable by other test areas::

    from tests.peers.pop3_server import POP3Thread, pop3_sections, client_tls_context

    config = make_config(pop3=pop3_sections("127.0.4.10"))
    with POP3Thread(config) as pop:
        client = poplib.POP3(*pop.plain)          # STLS offered here
        client = poplib.POP3_SSL(*pop.tls, context=client_tls_context(config))   # implicit TLS

    with POP3Process(config) as pop:      # the same service in a child process: pop.kill() is a crash
        ...

Use an address in your own private loopback range; ports are picked free on that address. Both run
as the invoking user (no privilege drop, unlike ``mailprov serve``). ``POP3Process`` also serves
benchmarks, where a server sharing the client's interpreter would share its GIL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from mailprov.config import Config
from mailprov.pop3.service import POP3Service
from mailprov.tls import certificate_paths


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pop3_sections(host: str, *, trusted: bool = False, **overrides: Any) -> dict[str, Any]:
    """A ``[pop3]`` table listening on ``host`` (free ports); ``trusted`` allows passwords without TLS
    from loopback. Pass it as ``make_config(pop3=pop3_sections(...))``."""
    section: dict[str, Any] = {
        "listen": [f"{host}:{free_port(host)}"],
        "tls_listen": [f"{host}:{free_port(host)}"],
        "plaintext_networks": ["127.0.0.0/8"] if trusted else [],
        "auth_failure_delay": 0.05,
    }
    section.update(overrides)
    return section


def client_tls_context(config: Config) -> ssl.SSLContext:
    """A client context trusting the service's (generated) certificate; host names are not checked
    because tests connect to addresses."""
    cert, _ = certificate_paths(config)
    context = ssl.create_default_context(cafile=os.fspath(cert))
    context.check_hostname = False
    return context


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class POP3Thread:
    """POP3Service running in its own event loop on a background thread (subclasses set ``service_class``
    and ``section`` to run another listener service the same way)."""

    service_class: Any = POP3Service
    section = "pop3"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.service: POP3Service | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def plain(self) -> tuple[str, int]:
        """(host, port) of the first plain (STLS) listener."""
        return _hostport(getattr(self.config, self.section).listen[0])

    @property
    def tls(self) -> tuple[str, int]:
        """(host, port) of the first implicit-TLS listener."""
        return _hostport(getattr(self.config, self.section).tls_listen[0])

    def start(self) -> POP3Thread:
        """Start and wait until the sockets are bound (raises what start() raised)."""
        Path(self.config.paths.state_dir).mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._main, name=f"{self.section}-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError(f"{self.section} service did not start within 30 s")
        if self._error:
            raise self._error
        return self

    def _main(self) -> None:
        async def run() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.service = self.service_class(self.config)
            try:
                await self.service.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.service.stop()

        asyncio.run(run())

    def stop(self) -> None:
        """Stop the service (sessions dropped without UPDATE) and join the thread."""
        if self.loop and self._stop and self._thread and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(30)

    def __enter__(self) -> POP3Thread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class POP3Process:
    """The POP3 service in a child process (``python -m tests.peers.pop3_server CONFIG.json``): for crash
    and restart tests and for benchmarks, where a server sharing the client's interpreter would share
    its GIL. It runs as the invoking user: unlike ``mailprov serve``, it never drops privileges.
    Subclasses set ``module`` and ``section`` to run another service module the same way."""

    module = "tests.peers.pop3_server"
    section = "pop3"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_file = Path(config.paths.state_dir).parent / f"{self.section}-process-config.json"

    @property
    def plain(self) -> tuple[str, int]:
        """(host, port) of the first plain (STLS) listener."""
        return _hostport(getattr(self.config, self.section).listen[0])

    @property
    def tls(self) -> tuple[str, int]:
        """(host, port) of the first implicit-TLS listener."""
        return _hostport(getattr(self.config, self.section).tls_listen[0])

    def start(self, timeout: float = 30) -> POP3Process:
        """Start it and wait (bounded) until it says it is ready."""
        if Path(self.config.source).is_file():  # loaded from a file: the child loads it too (and its workers)
            self.config_file = Path(self.config.source)
        else:
            data = dataclasses.asdict(self.config)
            data.pop("source", None)
            self.config_file.parent.mkdir(parents=True, exist_ok=True)
            self.config_file.write_text(json.dumps(data))
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, str(self.config_file)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=None,
        )
        assert self.proc.stdout is not None
        ready = select.select([self.proc.stdout], [], [], timeout)[0]
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"{self.section} service process did not start (said {line!r})")
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within 10 s."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> POP3Process:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(config_file: str, service_class: Any = POP3Service, name: str = "pop3") -> None:
    """Run ``service_class`` on the configuration (JSON, or a ``.toml`` file) until SIGTERM (the child
    side of POP3Process)."""
    from mailprov.config import from_dict, load

    config = load(config_file) if config_file.endswith(".toml") else from_dict(json.loads(Path(config_file).read_text()))
    logging.basicConfig(level=logging.WARNING, format=f"{name}-test-server: %(levelname)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        service = service_class(config)
        await service.start()
        print("ready", flush=True)
        await stop.wait()
        await service.stop()

    asyncio.run(main())


if __name__ == "__main__":
    serve_forever(sys.argv[1])
