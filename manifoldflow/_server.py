"""The resident server of the `manifoldflow` command (started by the launcher,
`_manifoldflow_launcher`, which also describes it): `python -m manifoldflow._server
KEY` loads manifoldflow, JAX and Matplotlib once, then runs the commands sent to its
socket one at a time, as `manifoldflow.cli.main` in the command's folder, with its
output sent back. It exits after `MANIFOLDFLOW_SERVER_IDLE` idle seconds (default
600), when the library's or a package's files change, after `MAX_COMMANDS` commands,
or after a command that ended in an unexpected exception (a fresh one starts with the
next command). It serves only on the CPU: an idle server would hold accelerator
memory that other processes need."""

import _thread
import contextlib
import fcntl
import io
import json
import os
import socket
import sys
import threading
import time
import traceback
import warnings

import _manifoldflow_launcher as launcher


MAX_COMMANDS = 1000
# How often an idle server looks at the clock and at the installed files (seconds).
CHECK_EVERY = 30.0


class _FrameWriter(io.TextIOBase):
    """A text stream whose writes go to the client as frames of one kind."""

    def __init__(self, connection: socket.socket, kind: bytes, tty: bool):
        self.connection, self.kind, self.tty = connection, kind, tty
        self.closed_by_client = False

    @property
    def encoding(self) -> str:
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        if text and not self.closed_by_client:
            try:
                launcher.send_frame(self.connection, self.kind, text.encode())
            except OSError:  # the client is gone; the command finishes unheard
                self.closed_by_client = True
        return len(text)


def serve(key: str) -> None:
    directory = launcher.server_directory()
    if directory is None:
        return
    lock = open(directory / f"{key}.lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another server for this key runs or is starting
        return
    # Not a GPU's memory: found out below without taking it all (JAX's default).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # Load what every command needs before taking any.
    import jax
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401

    from . import cli
    from ._jax_config import configure_jax
    from .experiments import EXPERIMENTS  # noqa: F401

    configure_jax(cache=True)
    if jax.default_backend() != "cpu":
        # An idle server would hold accelerator memory that other processes need.
        (directory / f"{key}.unserved").write_text(
            f"no server: JAX's default backend is {jax.default_backend()}\n"
        )
        return
    files = launcher.installed_files()
    idle = float(os.environ.get("MANIFOLDFLOW_SERVER_IDLE", "600"))
    path = launcher.socket_path(directory, key)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dead server's: this one holds the lock
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.fspath(path))
    listener.listen(8)
    listener.settimeout(min(idle, CHECK_EVERY))
    print(f"{time.ctime()}: pid {os.getpid()} serving {path}", flush=True)
    served, started, last = 0, time.time(), time.time()
    try:
        while served < MAX_COMMANDS:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                # Idle: stop when idle long enough, or when the library's or a
                # package's files changed (no command would be sent here again).
                if time.time() - last >= idle or launcher.installed_files() != files:
                    break
                continue
            except KeyboardInterrupt:  # a late interrupt of the last command
                continue
            with connection:
                try:
                    outcome = _handle(connection, cli, served, started, directory)
                except KeyboardInterrupt:
                    continue
            last = time.time()
            if outcome == "ran":
                served += 1
            elif outcome in ("stop", "broken"):
                break
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        listener.close()
        print(f"{time.ctime()}: pid {os.getpid()} stopped after {served} commands")


def _handle(connection, cli, served, started, directory) -> str:
    connection.settimeout(5.0)
    try:
        kind, payload = launcher.read_frame(connection)
        request = json.loads(payload.decode()) if kind == launcher.REQUEST else None
    except (OSError, ValueError):
        return "ignored"
    if not isinstance(request, dict):
        return "ignored"
    control = request.get("control")
    if control is not None:
        reply = (
            f"pid {os.getpid()}, {served} commands served, up "
            f"{time.time() - started:.0f} s"
        )
        with contextlib.suppress(OSError):
            launcher.send_frame(
                connection,
                launcher.STDOUT,
                ("stopped: " + reply if control == "stop" else reply).encode(),
            )
        return "stop" if control == "stop" else "ignored"
    try:
        launcher.send_frame(connection, launcher.ACCEPTED)
        kind, _ = launcher.read_frame(connection)
    except OSError:  # the client gave up waiting: it runs the command itself
        return "ignored"
    if kind != launcher.GO:
        return "ignored"
    connection.settimeout(None)
    return _run(connection, cli, request, directory)


def _run(connection, cli, request, directory) -> str:
    """Run one command as in its own process; send its output and exit code."""
    done = threading.Event()

    def watch():  # Ctrl-C, or the client gone: interrupt the command
        try:
            kind, _ = launcher.read_frame(connection)
        except (OSError, ValueError):
            kind = None
        if not done.is_set() and kind in (launcher.INTERRUPT, None):
            _thread.interrupt_main()

    stdout = _FrameWriter(connection, launcher.STDOUT, bool(request.get("stdout_tty")))
    stderr = _FrameWriter(connection, launcher.STDERR, bool(request.get("stderr_tty")))
    watcher = threading.Thread(target=watch, daemon=True)
    broken = False
    saved = sys.stdout, sys.stderr
    try:
        os.chdir(request["cwd"])
        sys.stdout, sys.stderr = stdout, stderr
        watcher.start()
        # Warnings show in every command, as in a new process.
        with warnings.catch_warnings():
            code = cli.exit_code(
                cli.main, list(request["argv"]), started=float(request["started"])
            )
    except KeyboardInterrupt:
        code = 130
    except Exception:
        traceback.print_exc()
        code, broken = 1, True
    finally:
        done.set()
        sys.stdout, sys.stderr = saved
        os.chdir(directory)
    with contextlib.suppress(OSError):
        launcher.send_frame(connection, launcher.EXIT, str(code).encode())
        connection.shutdown(socket.SHUT_RDWR)
    watcher.join(timeout=1.0)
    return "broken" if broken else "ran"


if __name__ == "__main__":
    serve(sys.argv[1])
