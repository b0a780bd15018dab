"""Plain data types shared by the sync and async clients, and how to reach the server."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import httpx


class CairnError(Exception):
    """An error answered by ``cairn serve`` (``status`` is the HTTP status, ``code`` its kind)."""

    def __init__(self, message: str, status: int = 0, code: str = "internal") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the server describes it."""

    name: str
    state: str
    cpus: int
    mem_mib: int
    disk_gib: int
    created: int
    last_activity: int
    head_checkpoint: Optional[str]
    idle_timeout: int

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "SandboxInfo":
        return SandboxInfo(**{k: d[k] for k in SandboxInfo.__dataclass_fields__})


@dataclass(frozen=True)
class ExecResult:
    """What a finished command left: its output and exit code (128 + N when killed by signal N)."""

    stdout: str
    stderr: str
    exit_code: int
    signal: Optional[int] = None

    @property
    def ok(self) -> bool:
        """True when the command exited with code 0."""
        return self.exit_code == 0


@dataclass(frozen=True)
class OutputChunk:
    """One piece of a streaming exec: ``kind`` is ``stdout``, ``stderr`` or ``exit``."""

    kind: str
    data: bytes = b""
    exit_code: Optional[int] = None
    signal: Optional[int] = None

    @property
    def text(self) -> str:
        """The bytes as text (invalid UTF-8 replaced)."""
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class FileInfo:
    """A directory entry (or a stat): kind is file, dir, symlink or other; mode is octal text."""

    name: str
    kind: str
    size: int
    mode: str
    mtime: int

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "FileInfo":
        return FileInfo(**{k: d[k] for k in FileInfo.__dataclass_fields__})


def cairn_home() -> Path:
    """``$CAIRN_HOME``, else ``$XDG_DATA_HOME/cairn``, else ``~/.local/share/cairn`` (as the CLI)."""
    if os.environ.get("CAIRN_HOME"):
        return Path(os.environ["CAIRN_HOME"])
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]) / "cairn"
    return Path.home() / ".local/share/cairn"


@dataclass
class Endpoint:
    """Where the server is: ``url`` (``http://host:port``) or the Unix ``socket``; the ``token``."""

    url: Optional[str] = None
    socket: Optional[str] = None
    token: Optional[str] = None
    timeout: Optional[float] = None
    headers: Dict[str, str] = field(default_factory=dict)

    @staticmethod
    def resolve(
        url: Optional[str] = None,
        socket: Optional[str] = None,
        token: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> "Endpoint":
        """Fills the blanks: ``CAIRN_URL`` or the home's ``serve.sock``; ``CAIRN_TOKEN`` or the home's token."""
        home = cairn_home()
        url = url or os.environ.get("CAIRN_URL")
        if not url and not socket:
            socket = str(home / "serve.sock")
        if token is None:
            token = os.environ.get("CAIRN_TOKEN")
        if token is None:
            try:
                token = (home / "serve.token").read_text().strip()
            except OSError:
                token = None
        ep = Endpoint(url=url, socket=socket, token=token, timeout=timeout)
        if token:
            ep.headers["Authorization"] = f"Bearer {token}"
        return ep

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/") if self.url else "http://cairn"


def raise_for(resp: httpx.Response, body: Optional[bytes] = None) -> None:
    """Raises :class:`CairnError` for a 4xx/5xx answer, with the server's message."""
    if resp.status_code < 400:
        return
    raw = body if body is not None else resp.content
    try:
        d = json.loads(raw)
        raise CairnError(d.get("error", raw.decode()), resp.status_code, d.get("code", "internal"))
    except (ValueError, AttributeError):
        raise CairnError(raw.decode("utf-8", "replace"), resp.status_code) from None


def exec_body(
    command: Union[str, List[str]],
    env: Optional[Dict[str, str]],
    cwd: Optional[str],
    stdin: Union[None, str, bytes],
    stream: bool,
) -> Dict[str, Any]:
    """The JSON body of an exec request."""
    body: Dict[str, Any] = {"stream": stream}
    if isinstance(command, str):
        body["command"] = command
    else:
        body["argv"] = list(command)
    if env:
        body["env"] = dict(env)
    if cwd:
        body["cwd"] = cwd
    if isinstance(stdin, str):
        body["stdin"] = stdin
    elif isinstance(stdin, (bytes, bytearray)):
        body["stdin_b64"] = base64.b64encode(stdin).decode()
    return body


def parse_line(line: str) -> Optional[OutputChunk]:
    """One NDJSON exec line as a chunk; ``None`` for heartbeats and ``started``."""
    line = line.strip()
    if not line:
        return None
    d = json.loads(line)
    t = d.get("type")
    if t in ("stdout", "stderr"):
        return OutputChunk(t, base64.b64decode(d["data"]))
    if t == "exit":
        return OutputChunk("exit", exit_code=d["exit_code"], signal=d.get("signal"))
    if t == "error":
        raise CairnError(d.get("message", "exec failed"), 500, d.get("code", "internal"))
    return None


def exec_result(raw: bytes) -> ExecResult:
    """A collected exec answer (heartbeat spaces, then one JSON object)."""
    d = json.loads(raw)
    if "error" in d:
        raise CairnError(d["error"], 500, d.get("code", "internal"))
    return ExecResult(d["stdout"], d["stderr"], d["exit_code"], d.get("signal"))


@dataclass(frozen=True)
class SessionInfo:
    """A detached session (``sb.sessions``): a process that outlives its client.

    ``state`` is ``running``, ``exited`` or ``killed``; ``exit_code`` is set once it ended
    (128 + N when killed by signal N).
    """

    id: int
    pid: int
    argv: List[str]
    started: int
    tty: bool
    stdin: bool
    state: str
    exit_code: Optional[int]
    signal: Optional[int]
    output_bytes: int
    dropped_bytes: int
    attached: int

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "SessionInfo":
        return SessionInfo(**{k: d[k] for k in SessionInfo.__dataclass_fields__})


@dataclass(frozen=True)
class StartedSession:
    """A session just started: its id in the sandbox and its guest pid."""

    id: int
    pid: int


def command_body(
    command: Union[str, List[str]],
    env: Optional[Dict[str, str]],
    cwd: Optional[str],
) -> Dict[str, Any]:
    """``command`` (a shell line) or ``argv``, with ``env`` and ``cwd``: the start of a request body."""
    body: Dict[str, Any] = {}
    if isinstance(command, str):
        body["command"] = command
    else:
        body["argv"] = list(command)
    if env:
        body["env"] = dict(env)
    if cwd:
        body["cwd"] = cwd
    return body


def process_body(
    command: Union[str, List[str]],
    env: Optional[Dict[str, str]],
    cwd: Optional[str],
    stdin: bool,
    tty: Optional[Tuple[int, int]],
) -> Dict[str, Any]:
    """The body that starts an interactive exec or a session: :func:`command_body`, whether
    stdin stays open, and the terminal size when ``tty`` is given."""
    body = command_body(command, env, cwd)
    body["stdin"] = stdin
    if tty is not None:
        body["tty"] = tty_body(tty)
    return body


def tty_body(tty: Optional[Tuple[int, int]]) -> Optional[Dict[str, int]]:
    """``(rows, cols)`` as the API's ``{"rows", "cols"}``."""
    if tty is None:
        return None
    rows, cols = tty
    return {"rows": int(rows), "cols": int(cols)}


def ws_frame(text: Union[str, bytes]) -> Optional[OutputChunk]:
    """One server frame of an interactive exec or attach as a chunk.

    ``None`` for ``started`` and ``attached``; a chunk of kind ``exit`` or ``detached`` ends
    the stream; an ``error`` frame raises :class:`CairnError`.
    """
    d = json.loads(text)
    t = d.get("type")
    if t in ("stdout", "stderr"):
        return OutputChunk(t, base64.b64decode(d["data"]))
    if t == "exit":
        return OutputChunk("exit", exit_code=d["exit_code"], signal=d.get("signal"))
    if t == "detached":
        return OutputChunk("detached")
    if t == "error":
        code = d.get("code", "internal")
        raise CairnError(d.get("message", "exec failed"), 400 if code == "bad_request" else 500, code)
    return None


def ws_url(endpoint: "Endpoint", path: str) -> str:
    """The ``ws://`` address of ``/v1`` + ``path`` (over the Unix socket the host is a placeholder)."""
    base = endpoint.url.rstrip("/") if endpoint.url else "http://cairn"
    if base.startswith("https://"):
        base = "wss://" + base[len("https://"):]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://"):]
    return base + "/v1" + path


def control_frame(kind: str, **fields: Any) -> str:
    """A client control frame (stdin_close, resize, signal, detach) as JSON text."""
    return json.dumps(dict(type=kind, **fields))
