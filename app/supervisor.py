"""uvicorn's supervisor of ``--workers N``, stopping at once on SIGTERM.

uvicorn's own looks at the signals it received every half second, and keeps its listening
socket open until it exits: meanwhile its workers would still say "ready", and once they
stopped accepting, new connections would wait in a backlog that nobody serves, for as long
as the requests in flight take. This one passes SIGTERM on to the workers at once (their
readiness fails within moments) and closes its copy of the socket (once the workers have
closed theirs, new connections are refused, as with one worker); uvicorn's own stop, the
same SIGTERM to each worker and waiting for them, follows.
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
        signal.signal(signal.SIGTERM, self._stop_now)

    def _stop_now(self, sig: int, frame: FrameType | None) -> None:
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)
        for sock in self.sockets:
            sock.close()
        self._queue_signal(sig, frame)
