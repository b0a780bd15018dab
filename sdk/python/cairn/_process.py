"""Interactive processes over WebSocket (blocking): :class:`Process` (an exec with stdin, or an
attached session) and :class:`Sessions` (``sb.sessions``)."""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple, Union

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect, unix_connect

from ._types import (
    CairnError,
    Endpoint,
    ExecResult,
    OutputChunk,
    SessionInfo,
    StartedSession,
    control_frame,
    process_body,
    ws_frame,
    ws_url,
)

if TYPE_CHECKING:
    from ._sync import Client


def ws_error(e: InvalidStatus) -> CairnError:
    """The server's refusal of a WebSocket upgrade as a :class:`CairnError`."""
    resp = e.response
    try:
        d = json.loads(resp.body or b"")
        return CairnError(d.get("error", str(e)), resp.status_code, d.get("code", "internal"))
    except ValueError:
        return CairnError(str(e), resp.status_code)


# websockets 16+ warns about connect() outside ``with`` unless asked for the plain connection.
_PLAIN: Dict[str, Any] = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}


def ws_open(endpoint: Endpoint, path: str) -> ClientConnection:
    """Opens a WebSocket to ``/v1`` + ``path`` with the endpoint's token."""
    uri = ws_url(endpoint, path)
    headers = dict(endpoint.headers)
    try:
        if endpoint.socket and not endpoint.url:
            return unix_connect(endpoint.socket, uri, additional_headers=headers, max_size=None, open_timeout=30, **_PLAIN)
        return connect(uri, additional_headers=headers, max_size=None, open_timeout=30, **_PLAIN)
    except InvalidStatus as e:
        raise ws_error(e) from None


class Process:
    """A process in a sandbox you can type into: a :meth:`Sandbox.exec_interactive` exec, or a
    session attached with :meth:`Sessions.attach`.

    Iterate it (or call :meth:`recv`) for :class:`OutputChunk` s; the last has kind ``exit``
    (or ``detached``). :meth:`send` writes stdin, :meth:`close_stdin` ends it, :meth:`resize`
    and :meth:`signal` act on the process. :meth:`close` (or leaving a ``with`` block) kills
    an exec's process; an attached session is only detached and goes on.
    """

    def __init__(self, ws: ClientConnection, *, session: bool) -> None:
        self._ws = ws
        self.session = session
        self.exit_code: Optional[int] = None
        self.signal_number: Optional[int] = None
        self.pid: Optional[int] = None
        self.dropped = 0
        self.replay = 0
        self.done = False

    def _head(self) -> None:
        """Reads the first frame (``started``, or ``attached`` for a session)."""
        d = json.loads(self._ws.recv(timeout=120))
        if d.get("type") == "error":
            self.done = True
            self._ws.close()
            ws_frame(json.dumps(d))
        self.pid = d.get("pid")
        self.dropped = d.get("dropped", 0)
        self.replay = d.get("replay", 0)

    def send(self, data: Union[str, bytes]) -> None:
        """Writes to the process's stdin."""
        self._ws.send(data.encode() if isinstance(data, str) else bytes(data))

    def close_stdin(self) -> None:
        """Ends stdin (EOF; under a tty: ^D)."""
        self._ws.send(control_frame("stdin_close"))

    def resize(self, rows: int, cols: int) -> None:
        """Sets the terminal size (tty only)."""
        self._ws.send(control_frame("resize", rows=rows, cols=cols))

    def signal(self, signal: int) -> None:
        """Sends a signal (e.g. 2 for SIGINT) to the process."""
        self._ws.send(control_frame("signal", signal=signal))

    def recv(self, timeout: Optional[float] = None) -> Optional[OutputChunk]:
        """The next output chunk; ``None`` once the stream has ended.

        Raises ``TimeoutError`` when nothing came within ``timeout`` seconds.
        """
        while not self.done:
            try:
                raw = self._ws.recv(timeout=timeout)
            except ConnectionClosed:
                self.done = True
                return None
            chunk = ws_frame(raw)
            if chunk is None:
                continue
            if chunk.kind in ("exit", "detached"):
                self.done = True
                self.exit_code, self.signal_number = chunk.exit_code, chunk.signal
            return chunk
        return None

    def __iter__(self) -> Iterator[OutputChunk]:
        while True:
            c = self.recv()
            if c is None:
                return
            yield c

    def read_until(self, text: Union[str, bytes], timeout: float = 60.0) -> bytes:
        """Output (stdout and stderr) up to and including the first ``text``; raises
        ``TimeoutError`` when it does not come within ``timeout`` seconds in all."""
        import time

        want = text.encode() if isinstance(text, str) else text
        got = b""
        deadline = time.monotonic() + timeout
        while want not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{want!r} did not come; got {got[-200:]!r}")
            c = self.recv(timeout=left)
            if c is None:
                raise CairnError(f"the stream ended before {want!r}; got {got[-200:]!r}")
            got += c.data
        return got

    def wait(self, timeout: Optional[float] = None) -> ExecResult:
        """Reads to the end; the output from here on and the exit code."""
        out, err = b"", b""
        for c in iter(lambda: self.recv(timeout), None):
            if c.kind == "stdout":
                out += c.data
            elif c.kind == "stderr":
                err += c.data
        code = self.exit_code if self.exit_code is not None else -1
        return ExecResult(out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), code, self.signal_number)

    def detach(self) -> None:
        """Attached sessions: leaves the session running and ends this connection."""
        if not self.done:
            self._ws.send(control_frame("detach"))
            for _ in self:
                pass
        self.close()

    def close(self) -> None:
        """Closes the connection: an exec's process is killed, a session goes on."""
        self.done = True
        self._ws.close()

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_exec(
    client: "Client",
    base: str,
    command: Union[str, List[str]],
    env: Optional[Dict[str, str]],
    cwd: Optional[str],
    tty: Optional[Tuple[int, int]],
    stdin: bool,
) -> Process:
    """Starts an interactive exec on ``base`` + ``/exec``."""
    body = process_body(command, env, cwd, stdin, tty)
    ws = ws_open(client.endpoint, base + "/exec")
    p = Process(ws, session=False)
    try:
        ws.send(json.dumps(body))
        p._head()
    except BaseException:
        ws.close()
        raise
    return p


class Sessions:
    """Detached sessions in one sandbox (``sb.sessions``): processes that outlive their
    client, keep running across idle sleep and wake, and keep their output (bounded) until
    someone attaches."""

    def __init__(self, client: "Client", base: str) -> None:
        self._c = client
        self._base = base + "/sessions"

    def start(
        self,
        command: Union[str, List[str]],
        *,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: bool = False,
        tty: Optional[Tuple[int, int]] = None,
    ) -> StartedSession:
        """Starts a detached session (a string runs with ``sh -c``, a list as argv).

        ``stdin``: keep its stdin open for attached clients to type into. ``tty``: run under
        a terminal of ``(rows, cols)``.
        """
        body = process_body(command, env, cwd, stdin, tty)
        d = self._c.request("POST", self._base, json=body).json()
        return StartedSession(d["id"], d["pid"])

    def list(self) -> List[SessionInfo]:
        """The sandbox's sessions, oldest first (ended ones too, until killed)."""
        return [SessionInfo.from_json(d) for d in self._c.request("GET", self._base).json()]

    def attach(self, id: int) -> Process:
        """Attaches: the kept output comes first, then live output; :meth:`Process.send`
        types into a session started with ``stdin=True``. Closing detaches."""
        ws = ws_open(self._c.endpoint, f"{self._base}/{int(id)}/attach")
        p = Process(ws, session=True)
        try:
            p._head()
        except BaseException:
            ws.close()
            raise
        return p

    def kill(self, id: int) -> None:
        """Kills a session and forgets it."""
        self._c.request("DELETE", f"{self._base}/{int(id)}")
