"""The `manifoldflow` command's launcher: runs each command in a resident server
process when one is up, else in this process.

Importing manifoldflow (JAX, Equinox, Diffrax, Lineax, Optimistix, Matplotlib) takes
about a second before any work starts, and a new process loads its compiled programs
again. A server keeps all of that loaded: after a command has run in its own process,
the launcher starts a server in the background (`manifoldflow._server`), and the next
commands are sent to it over a Unix socket, their output streamed back. A server
serves one command at a time (a second command meanwhile runs in its own process),
exits after `MANIFOLDFLOW_SERVER_IDLE` seconds without a command (default 600), and
serves only commands from the same Python, the same installed packages and library
source, and the same environment variables that affect JAX, BLAS and manifoldflow
(`JAX_*`, `XLA_*`, `MANIFOLDFLOW_*`, `OMP_*`, ...): anything else gets a server of its
own.

Opt out with `--no-server` (or `--no-cache`) on a command, or `MANIFOLDFLOW_SERVER=0`;
`manifoldflow server status` lists the servers, `manifoldflow server stop` stops them.

This module imports only the standard library: it must start in milliseconds.
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import signal
import socket
import stat
import struct
import subprocess
import sys
import time


# Bump when the frames or the requests change.
PROTOCOL = 1
# How long a client waits for a server to take its command before running it itself.
ACCEPT_TIMEOUT = 1.0
# The packages whose installed files identify what a server has loaded.
_PACKAGES = (
    "manifoldflow",
    "jax",
    "jaxlib",
    "equinox",
    "diffrax",
    "lineax",
    "optimistix",
    "jaxtyping",
    "numpy",
    "scipy",
    "matplotlib",
    "tqdm",
)
# Environment variables that change what a command computes or where it keeps files.
_ENVIRONMENT_PREFIXES = (
    "MANIFOLDFLOW_",
    "JAX_",
    "XLA_",
    "TF_",
    "CUDA_",
    "NVIDIA_",
    "TPU_",
    "LD_",
    "OMP_",
    "OPENBLAS_",
    "MKL_",
    "BLIS_",
    "PYTHON",
    "MPL",
    "XDG_",
)
_ENVIRONMENT_NAMES = ("HOME", "PATH", "TMPDIR", "LANG", "LC_ALL")
# Accelerator plugins of JAX: where one is installed, no server (see `may_serve_here`).
_ACCELERATOR_PLUGINS = (
    "jax_plugins",
    "libtpu",
    "jax_cuda12_plugin",
    "jax_cuda13_plugin",
)

# Frames: one byte of kind, four of length, the payload.
REQUEST = b"r"  # client -> server: the command (JSON), or a control word
ACCEPTED = b"a"  # server -> client: ready to run it
GO = b"g"  # client -> server: run it (the client will not)
STDOUT = b"o"  # server -> client: output, or the reply to a control word
STDERR = b"e"
EXIT = b"x"  # server -> client: the exit code, last
INTERRUPT = b"i"  # client -> server: Ctrl-C
_HEADER = struct.Struct("!cI")


def run() -> None:
    """The `manifoldflow` console command."""
    started = time.time()
    argv = sys.argv[1:]
    if argv[:1] == ["server"]:
        sys.exit(server_command(argv[1:]))
    then = None
    if server_enabled(argv):
        # Before importing JAX, which sets environment variables of its own: the
        # server gets this environment, and computes the same key from it.
        key, environment = server_key(), dict(os.environ)
        code = send_to_server(argv, started, key)
        if code is not None:
            _exit(code)
        then = lambda: start_server(key, environment)  # for the next commands
    from manifoldflow.cli import fast_exit, run as run_here

    run_here(argv, started=started, then=then, exit=fast_exit)


def server_enabled(argv: list[str]) -> bool:
    """Whether a command may run in (and start) a server."""
    if os.environ.get("MANIFOLDFLOW_SERVER", "1").strip().lower() in ("0", "no", "off"):
        return False
    if "--no-server" in argv or "--no-cache" in argv:
        return False
    if os.name != "posix" or not hasattr(socket, "AF_UNIX"):
        return False
    for name in ("MANIFOLDFLOW_CACHE_DIR", "XDG_CACHE_HOME"):
        if not os.path.isabs(os.environ.get(name) or "/"):  # depends on the folder
            return False
    return server_directory() is not None


def server_directory() -> pathlib.Path | None:
    """The folder of the servers' sockets, locks and logs:
    `$XDG_RUNTIME_DIR/manifoldflow`, else `$TMPDIR/manifoldflow-UID` (short paths: a
    socket's is limited to about 100 bytes). `None` when it is not private to this
    user (then no server is used)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        directory = pathlib.Path(runtime) / "manifoldflow"
    else:
        temporary = os.environ.get("TMPDIR") or "/tmp"
        directory = pathlib.Path(temporary) / f"manifoldflow-{os.getuid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        status = directory.lstat()  # not a symbolic link's target
    except OSError:
        return None
    if not stat.S_ISDIR(status.st_mode):
        return None
    if status.st_uid != os.getuid() or status.st_mode & 0o077:
        return None
    return directory


def server_key() -> str:
    """What a server must share with a command to serve it: the protocol, the
    Python, the installed packages and library source (`installed_files`), the
    environment variables that matter (among them those that choose the cache
    folder)."""
    digest = hashlib.sha256()
    for part in (PROTOCOL, sys.executable, sys.version, os.getuid(), installed_files()):
        digest.update(f"{part}\0".encode())
    for name in sorted(os.environ):
        if name.startswith(_ENVIRONMENT_PREFIXES) or name in _ENVIRONMENT_NAMES:
            digest.update(f"{name}={os.environ[name]}\0".encode())
    return digest.hexdigest()[:24]


def installed_files() -> str:
    """A digest of the installed packages' and the library's files, by path, time
    and size: a server whose files changed stops serving."""
    digest = hashlib.sha256()
    launcher = pathlib.Path(__file__)
    digest.update(f"{launcher} {launcher.stat().st_mtime_ns}\0".encode())
    # Every installed distribution by name and version (an upgrade renames its
    # folder), then the files of the packages a command loads.
    for entry in sys.path:
        if entry.endswith(("site-packages", "dist-packages")) and os.path.isdir(entry):
            names = sorted(n for n in os.listdir(entry) if n.endswith(".dist-info"))
            digest.update(f"{entry}: {' '.join(names)}\0".encode())
    for package in (*_PACKAGES, *_ACCELERATOR_PLUGINS):
        spec = importlib.util.find_spec(package)
        origin = getattr(spec, "origin", None)
        digest.update(f"{package}={origin}\0".encode())
        if origin is None:
            continue
        files = [pathlib.Path(origin)]
        if package == "manifoldflow":  # its source, which an editable install edits
            files = sorted(pathlib.Path(origin).parent.rglob("*.py"))
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                continue
            digest.update(f"{path} {stat.st_mtime_ns} {stat.st_size}\0".encode())
    return digest.hexdigest()


def socket_path(directory: pathlib.Path, key: str) -> pathlib.Path:
    return directory / f"{key}.sock"


def may_serve_here() -> str | None:
    """Why no server may run for this environment (`None`: one may). An idle server
    holding a GPU's or TPU's memory would starve other processes, so a server runs
    only where JAX can use nothing but the CPU."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return None
    for plugin in _ACCELERATOR_PLUGINS:
        if importlib.util.find_spec(plugin) is not None:
            return f"an accelerator plugin of JAX is installed ({plugin})"
    return None


def send_to_server(argv: list[str], started: float, key: str) -> int | None:
    """Run the command in the server for `key` (see `server_key`); its exit code, or
    `None` when no server took it (then nothing ran)."""
    directory = server_directory()
    if directory is None:
        return None
    path = socket_path(directory, key)
    if len(os.fsencode(path)) > 100:  # the limit on socket paths
        return None
    if not path.exists() or _locked(directory / f"{key}.busy"):
        return None  # no server, or a busy one: run here at once
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(ACCEPT_TIMEOUT)
        connection.connect(os.fspath(path))
        request = dict(
            argv=argv,
            cwd=os.getcwd(),
            started=started,
            stdout_tty=_isatty(sys.stdout),
            stderr_tty=_isatty(sys.stderr),
        )
        send_frame(connection, REQUEST, json.dumps(request).encode())
        kind, _ = read_frame(connection)
        if kind != ACCEPTED:
            return None
        # From here on the command is the server's: the server runs it only after
        # this, so a command never runs twice.
        send_frame(connection, GO)
    except OSError:  # no server, a busy one, a stale socket
        connection.close()
        return None
    connection.settimeout(None)
    try:
        return _relay(connection)
    finally:
        connection.close()


def _relay(connection: socket.socket) -> int:
    """Write the server's output here until its exit code. Ctrl-C interrupts the
    command in the server, which then writes what it has, as in its own process; a
    second one interrupts that too; a third gives up waiting."""
    interrupts = 0

    def interrupt(signum, frame) -> None:  # returns: the interrupted read resumes
        nonlocal interrupts
        interrupts += 1
        if interrupts >= 3:
            _exit(130)
        try:
            send_frame(connection, INTERRUPT)
        except OSError:
            _exit(130)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        while True:
            try:
                kind, payload = read_frame(connection)
            except OSError:
                kind, payload = None, b""
            if kind == STDOUT:
                _write(sys.stdout, payload)
            elif kind == STDERR:
                _write(sys.stderr, payload)
            elif kind == EXIT:
                return int(payload.decode())
            else:
                print(
                    "manifoldflow: the server running this command stopped before it "
                    "finished; run it again with --no-server (the server's log is in "
                    f"{server_directory()}).",
                    file=sys.stderr,
                )
                return 1
    finally:
        signal.signal(signal.SIGINT, previous)


def start_server(key: str, environment: dict[str, str]) -> None:
    """Start a server for `key` in the background, with `environment`, unless one
    runs or is starting (it holds the key's lock) or none may run here."""
    directory = server_directory()
    if directory is None:
        return
    if len(os.fsencode(socket_path(directory, key))) > 100 or server_alive(
        directory, key
    ):
        return
    unserved = directory / f"{key}.unserved"
    reason = may_serve_here()
    if reason is not None or unserved.exists():
        if reason is not None:
            unserved.write_text(f"no server: {reason}\n")
        return
    try:
        log = open(directory / f"{key}.log", "ab")
    except OSError:
        return
    with log:
        subprocess.Popen(
            # -P: the server's imports come from where the command's came from (its
            # key says so), never from its working folder.
            [sys.executable, "-P", "-m", "_manifoldflow_launcher", "--serve", key],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            env=environment,
            start_new_session=True,  # not stopped by the terminal's Ctrl-C
        )


def server_alive(directory: pathlib.Path, key: str) -> bool:
    """Whether a server for `key` holds its lock (runs, or is starting)."""
    return _locked(directory / f"{key}.lock")


def _locked(path: pathlib.Path) -> bool:
    """Whether a process holds an exclusive `flock` on `path` (`True` when that
    cannot be told)."""
    import fcntl

    if not path.exists():
        return False
    try:
        with open(path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False
    except OSError:
        return True


def server_command(argv: list[str]) -> int:
    """`manifoldflow server status` or `manifoldflow server stop`."""
    if argv not in (["status"], ["stop"]):
        print(
            "usage: manifoldflow server {status,stop}  (servers keep manifoldflow "
            "loaded between commands; see --no-server)",
            file=sys.stderr,
        )
        return 2
    directory = server_directory()
    sockets = sorted(directory.glob("*.sock")) if directory is not None else []
    found = 0
    for path in sockets:
        reply = _control(path, argv[0])
        if reply is None and _locked(path.with_suffix(".busy")):
            reply = _busy(path, argv[0])
        if reply is None:
            continue
        found += 1
        print(f"{path.stem}: {reply}")
    if not found:
        print("no manifoldflow server is running")
    return 0


def _busy(path: pathlib.Path, command: str) -> str:
    """A server busy with a command: its pid; `stop` ends it with SIGTERM."""
    try:
        pid = int(path.with_suffix(".pid").read_text())
    except (OSError, ValueError):
        return "busy with a command"
    if command == "stop":
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            return f"pid {pid}, busy with a command (could not be stopped)"
        return f"stopped: pid {pid}, which was busy with a command"
    return f"pid {pid}, busy with a command"


def _control(path: pathlib.Path, command: str) -> str | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(0.3 if _locked(path.with_suffix(".busy")) else 5.0)
        connection.connect(os.fspath(path))
        send_frame(connection, REQUEST, json.dumps({"control": command}).encode())
        kind, payload = read_frame(connection)
        return payload.decode() if kind == STDOUT else None
    except OSError:
        return None
    finally:
        connection.close()


def send_frame(connection: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    connection.sendall(_HEADER.pack(kind, len(payload)) + payload)


def read_frame(connection: socket.socket) -> tuple[bytes, bytes]:
    kind, length = _HEADER.unpack(_read_exactly(connection, _HEADER.size))
    return kind, _read_exactly(connection, length)


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the other end closed the connection")
        data += chunk
    return data


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _write(stream, payload: bytes) -> None:
    try:
        stream.buffer.write(payload)
        stream.flush()
    except (OSError, ValueError):  # a closed pipe (`| head`)
        pass


def flush_streams() -> None:
    """Flush stdout and stderr, ignoring a closed pipe (`| head`)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _exit(code: int) -> None:
    flush_streams()
    os._exit(code)


def serve(key: str) -> None:
    """Become the server for `key` (`python -P -m _manifoldflow_launcher --serve
    KEY`), unless none may run here or this process finds other files or another
    environment than the command's did: checked before importing manifoldflow, whose
    import sets environment variables of JAX's."""
    directory = server_directory()
    if directory is None:
        return
    reason = may_serve_here()
    if reason is None and server_key() != key:
        reason = "a server would load other files than the command's own process"
    if reason is not None:
        (directory / f"{key}.unserved").write_text(f"no server: {reason}\n")
        return
    from manifoldflow._server import serve as serve_commands

    serve_commands(key)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        run()
