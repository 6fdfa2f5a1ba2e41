"""The resident server of the `manifoldflow` command.

The launcher (`_manifoldflow_launcher`, which describes it) starts it and checks its
key before this module is imported. It loads manifoldflow, JAX and Matplotlib once,
then runs the commands sent to its socket one at a time, as `manifoldflow.cli.main`
in the command's folder, with its output sent back. It exits after
`MANIFOLDFLOW_SERVER_IDLE` idle seconds (default 600), when the library's or a
package's files change, after `MAX_COMMANDS` commands, or after a command that ended
in an unexpected exception (a fresh one starts with the next command). It refuses to
serve where JAX's default backend is not the CPU (an idle server would hold
accelerator memory that other processes need)."""

import _thread
import contextlib
import fcntl
import io
import json
import os
import queue
import signal
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


class _Sender:
    """Sends frames to the client from one thread, in order: a write from any thread
    is queued whole, so an interrupt of the command never cuts a frame."""

    def __init__(self, connection: socket.socket):
        self.connection = connection
        self.frames: queue.SimpleQueue = queue.SimpleQueue()
        self.gone = False
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def put(self, kind: bytes, payload: bytes = b"") -> None:
        self.frames.put((kind, payload))

    def close(self, timeout: float = 10.0) -> None:
        self.frames.put(None)
        self.thread.join(timeout)

    def _send(self) -> None:
        while (frame := self.frames.get()) is not None:
            if self.gone:
                continue
            try:
                launcher.send_frame(self.connection, *frame)
            except OSError:  # the client is gone; the command finishes unheard
                self.gone = True


class _FrameWriter(io.TextIOBase):
    """A text stream whose writes go to the client as frames of one kind."""

    def __init__(self, sender: _Sender, kind: bytes, tty: bool):
        self.sender, self.kind, self.tty = sender, kind, tty

    @property
    def encoding(self) -> str:
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        if text:
            self.sender.put(self.kind, text.encode("utf-8", "surrogateescape"))
        return len(text)


def serve(key: str) -> None:
    directory = launcher.server_directory()
    if directory is None:
        return
    # Ctrl-C relayed from a client must raise here, even where this process was
    # started with SIGINT ignored (a command run in the background).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    lock = open(directory / f"{key}.lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another server for this key runs or is starting
        return
    files = launcher.installed_files()
    # Load what every command needs before taking any.
    import jax
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401

    from . import cli
    from ._jax_config import configure_jax
    from .experiments import EXPERIMENTS  # noqa: F401

    configure_jax(cache=True)
    if jax.default_backend() != "cpu":  # a safety net for `may_serve_here`
        (directory / f"{key}.unserved").write_text(
            f"no server: JAX's default backend is {jax.default_backend()}\n"
        )
        return
    idle = max(1.0, float(os.environ.get("MANIFOLDFLOW_SERVER_IDLE", "600")))
    path = launcher.socket_path(directory, key)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dead server's: this one holds the lock
    (directory / f"{key}.pid").write_text(str(os.getpid()))
    busy = open(directory / f"{key}.busy", "a")
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
            try:
                with connection:
                    outcome = _handle(connection, cli, served, started, busy)
            except KeyboardInterrupt:
                continue
            if outcome == "ran":
                served, last = served + 1, time.time()
            elif outcome in ("stop", "broken"):
                break
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        listener.close()
        print(f"{time.ctime()}: pid {os.getpid()} stopped after {served} commands")


def _handle(connection, cli, served, started, busy) -> str:
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
    fcntl.flock(busy, fcntl.LOCK_EX)
    try:
        return _run(connection, cli, request)
    finally:
        fcntl.flock(busy, fcntl.LOCK_UN)


def _run(connection, cli, request) -> str:
    """Run one command as in its own process; send its output and exit code."""
    from ._errors import InputError

    guard = threading.Lock()
    done = False

    def watch():  # each Ctrl-C, or the client gone: interrupt the command
        while True:
            try:
                kind, _ = launcher.read_frame(connection)
            except (OSError, ValueError):
                kind = None
            with guard:
                if done:
                    return
                if kind in (launcher.INTERRUPT, None):
                    _thread.interrupt_main()
            if kind is None:
                return

    sender = _Sender(connection)
    stdout = _FrameWriter(sender, launcher.STDOUT, bool(request.get("stdout_tty")))
    stderr = _FrameWriter(sender, launcher.STDERR, bool(request.get("stderr_tty")))
    watcher = threading.Thread(target=watch, daemon=True)
    code, broken = 1, False
    saved = sys.stdout, sys.stderr, os.getcwd()
    try:
        sys.stdout, sys.stderr = stdout, stderr
        os.chdir(request["cwd"])
        watcher.start()
        # Warnings show in every command, as in a new process.
        with warnings.catch_warnings():
            code = cli.exit_code(
                cli.main, list(request["argv"]), started=float(request["started"])
            )
    except KeyboardInterrupt:
        code = 130
    except Exception as error:
        traceback.print_exc()
        # Not the server's fault: an input error under --debug, a missing folder.
        code, broken = 1, not isinstance(error, (InputError, OSError))
    finally:
        with guard:
            done = True
    # An interrupt sent just before `done` may still arrive: the clean-up repeats
    # until it has run whole.
    while True:
        try:
            sys.stdout, sys.stderr = saved[:2]
            os.chdir(saved[2])
            sender.put(launcher.EXIT, str(code).encode())
            sender.close()
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            watcher.join(timeout=1.0)
            break
        except KeyboardInterrupt:
            continue
    return "broken" if broken else "ran"
