"""uvicorn's supervisor of ``--workers N``, passing SIGTERM on to the workers at once.

uvicorn's own looks at the signals it received every half second; until then its workers
would keep saying "ready". Passed on at once, their readiness fails within moments, and the
supervisor's own stop (the same SIGTERM to each worker, then waiting for them) follows.
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
        queue: Any = signal.getsignal(signal.SIGTERM)

        def pass_on(sig: int, frame: FrameType | None) -> None:
            for process in self.processes:
                if process.pid is not None and process.exitcode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, sig)
            queue(sig, frame)

        signal.signal(signal.SIGTERM, pass_on)
