"""uvicorn's supervisor of ``--workers N``, stopping at once on SIGTERM.

uvicorn's own looks at the signals it received every half second, and keeps its listening
socket open until it exits: meanwhile its workers would still say "ready", and once they
stopped accepting, new connections would wait in a backlog that nobody serves, for as long
as the requests in flight take. This one passes SIGTERM on to the workers at once (their
readiness fails within moments) and closes its copy of the socket (once the workers have
closed theirs, new connections are refused, as with one worker); uvicorn's own stop
follows, waiting for the workers, but without a second SIGTERM to those that had this one: a
worker that finished its graceful shutdown re-raises the signal to the handler that was there
before uvicorn's, which may still be running when a second one lands (coverage's, saving its
data, failed that way under load).
"""

import contextlib
import os
import signal
from socket import socket
from types import FrameType
from typing import Any

from uvicorn import Config
from uvicorn.supervisors import Multiprocess

__all__ = ["Supervisor"]


class Supervisor(Multiprocess):
    def __init__(self, config: Config, sockets: list[socket]) -> None:
        super().__init__(config, sockets)  # installs its handlers, which queue the signals
        self._queue_signal: Any = signal.getsignal(signal.SIGTERM)
        self._signalled: set[int] = set()
        signal.signal(signal.SIGTERM, self._stop_now)

    def _stop_now(self, sig: int, frame: FrameType | None) -> None:
        for process in self.processes:
            pid = process.pid
            if pid is not None and pid not in self._signalled and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                self._signalled.add(pid)
        for sock in self.sockets:
            sock.close()
        self._queue_signal(sig, frame)

    def terminate_all(self) -> None:
        for process in self.processes:
            if process.pid in self._signalled:
                process.parent_conn.close()
                process.child_conn.close()
            else:
                process.terminate()
