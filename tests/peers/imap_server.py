"""Run mailprov's IMAP service for tests: in a background thread, or in a child process (benchmarks).

    from tests.peers.imap_server import IMAPThread, imap_sections
    config = make_config(imap=imap_sections("127.0.13.10", trusted=True))
    with IMAPThread(config) as imap:
        client = imaplib.IMAP4(*imap.plain)

Both run as the invoking user (no privilege drop, unlike ``mailprov serve``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from mailprov.config import Config
from mailprov.imap.service import IMAPService
from tests.peers.pop3_server import _hostport, free_port


def imap_sections(host: str, *, trusted: bool = False, **overrides: Any) -> dict[str, Any]:
    """An ``[imap]`` table listening on ``host`` (free ports); ``trusted`` allows passwords without TLS
    from loopback."""
    section: dict[str, Any] = {
        "listen": [f"{host}:{free_port(host)}"],
        "tls_listen": [f"{host}:{free_port(host)}"],
        "plaintext_networks": ["127.0.0.0/8"] if trusted else [],
        "auth_failure_delay": 0.05,
    }
    section.update(overrides)
    return section


class IMAPThread:
    """IMAPService running in its own event loop on a background thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.service: IMAPService | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def plain(self) -> tuple[str, int]:
        """(host, port) of the first plain (STARTTLS) listener."""
        return _hostport(self.config.imap.listen[0])

    @property
    def tls(self) -> tuple[str, int]:
        """(host, port) of the first implicit-TLS listener."""
        return _hostport(self.config.imap.tls_listen[0])

    def start(self) -> IMAPThread:
        """Start and wait until the sockets are bound (raises what start() raised)."""
        Path(self.config.paths.state_dir).mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._main, name="imap-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("IMAP service did not start within 30 s")
        if self._error:
            raise self._error
        return self

    def _main(self) -> None:
        async def run() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.service = IMAPService(self.config)
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
        """Stop the service and join the thread."""
        if self.loop and self._stop and self._thread and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(30)

    def __enter__(self) -> IMAPThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class IMAPProcess:
    """The IMAP service in a child process (``python -m tests.peers.imap_server CONFIG.json``)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_file = Path(config.paths.state_dir).parent / "imap-process-config.json"

    @property
    def plain(self) -> tuple[str, int]:
        """(host, port) of the first plain listener."""
        return _hostport(self.config.imap.listen[0])

    def start(self, timeout: float = 30) -> IMAPProcess:
        """Start it and wait (bounded) until it says it is ready."""
        data = dataclasses.asdict(self.config)
        data.pop("source", None)
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(data))
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.peers.imap_server", str(self.config_file)], cwd=root, stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        ready = select.select([self.proc.stdout], [], [], timeout)[0]
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"IMAP service process did not start (said {line!r})")
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within 10 s."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> IMAPProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve_forever(config_file: str) -> None:
    from mailprov.config import from_dict

    config = from_dict(json.loads(Path(config_file).read_text()))
    logging.basicConfig(level=logging.WARNING, format="imap-test-server: %(levelname)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        service = IMAPService(config)
        await service.start()
        print("ready", flush=True)
        await stop.wait()
        await service.stop()

    asyncio.run(main())


if __name__ == "__main__":
    _serve_forever(sys.argv[1])
