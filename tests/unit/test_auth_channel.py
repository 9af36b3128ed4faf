"""The worker side of shared AUTH-failure counting (mailprov.workers.ChannelAuthThrottle), over a real
SOCK_SEQPACKET pair: the master's answers are used, and a master that does not answer makes the worker
count on its own instead of letting the client guess freely."""

from __future__ import annotations

import asyncio
import socket

from mailprov import workers
from mailprov.limits import FailureThrottle


def test_the_masters_count_is_used_and_a_silent_master_falls_back(monkeypatch):
    monkeypatch.setattr(workers, "AUTH_ASK_TIMEOUT", 0.2)

    async def scenario() -> None:
        worker_end, master_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        worker_end.setblocking(False)
        master_end.setblocking(False)
        loop = asyncio.get_running_loop()
        shared = FailureThrottle(0.25, 2)  # the master's
        throttle = workers.ChannelAuthThrottle(worker_end, FailureThrottle(1.0, 3))
        silent = False

        def master() -> None:  # WorkerPool._on_message and _answer_auth, for one worker
            kind, _, value = master_end.recv(workers.MESSAGE_MAX).decode().partition(" ")
            if not silent:
                master_end.send(workers.auth_reply(shared, kind, value).encode())

        def worker() -> None:
            kind, _, value = worker_end.recv(workers.MESSAGE_MAX).decode().partition(" ")
            assert kind == "A"
            throttle.answer(value)

        loop.add_reader(master_end.fileno(), master)
        loop.add_reader(worker_end.fileno(), worker)
        try:
            shared.fail("192.0.2.7")  # another worker's failure, counted by the master
            assert await throttle.fail("192.0.2.7") == (0.5, 2)
            assert await throttle.blocked("192.0.2.7") and not await throttle.blocked("192.0.2.8")
            silent = True
            assert await throttle.fail("192.0.2.8") == (1.0, 1), "no answer: counted in the worker"
            assert not await throttle.blocked("192.0.2.8")
            assert not throttle._waiting, "no future left behind"
        finally:
            loop.remove_reader(master_end.fileno())
            loop.remove_reader(worker_end.fileno())
            worker_end.close()
            master_end.close()

    asyncio.run(scenario())
