"""The async twin of :mod:`cairn._process`: :class:`AsyncProcess` and :class:`AsyncSessions`."""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, List, Optional, Tuple, Union

from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ._process import ws_error
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
    from ._async import AsyncClient


_PLAIN: Dict[str, Any] = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}


async def ws_open(endpoint: Endpoint, path: str) -> ClientConnection:
    """Opens a WebSocket to ``/v1`` + ``path`` with the endpoint's token."""
    uri = ws_url(endpoint, path)
    headers = dict(endpoint.headers)
    try:
        if endpoint.socket and not endpoint.url:
            return await unix_connect(endpoint.socket, uri, additional_headers=headers, max_size=None, open_timeout=30, **_PLAIN)
        return await connect(uri, additional_headers=headers, max_size=None, open_timeout=30, **_PLAIN)
    except InvalidStatus as e:
        raise ws_error(e) from None


class AsyncProcess:
    """A process in a sandbox you can type into: an :meth:`AsyncSandbox.exec_interactive` exec,
    or a session attached with :meth:`AsyncSessions.attach` (the twin of :class:`Process`).

    Iterate it with ``async for`` (or await :meth:`recv`) for :class:`OutputChunk` s; the last
    has kind ``exit`` (or ``detached``). :meth:`send` writes stdin, :meth:`close_stdin` ends it, :meth:`resize`
    and :meth:`signal` act on the process. :meth:`close` (or leaving an ``async with`` block) kills
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

    async def _head(self) -> None:
        """Reads the first frame (``started``, or ``attached`` for a session)."""
        d = json.loads(await asyncio.wait_for(self._ws.recv(), 120))
        if d.get("type") == "error":
            self.done = True
            await self._ws.close()
            ws_frame(json.dumps(d))
        self.pid = d.get("pid")
        self.dropped = d.get("dropped", 0)
        self.replay = d.get("replay", 0)

    async def send(self, data: Union[str, bytes]) -> None:
        """Writes to the process's stdin."""
        await self._ws.send(data.encode() if isinstance(data, str) else bytes(data))

    async def close_stdin(self) -> None:
        """Ends stdin (EOF; under a tty: ^D)."""
        await self._ws.send(control_frame("stdin_close"))

    async def resize(self, rows: int, cols: int) -> None:
        """Sets the terminal size (tty only)."""
        await self._ws.send(control_frame("resize", rows=rows, cols=cols))

    async def signal(self, signal: int) -> None:
        """Sends a signal (e.g. 2 for SIGINT) to the process."""
        await self._ws.send(control_frame("signal", signal=signal))

    async def recv(self, timeout: Optional[float] = None) -> Optional[OutputChunk]:
        """The next output chunk; ``None`` once the stream has ended.

        Raises ``TimeoutError`` when nothing came within ``timeout`` seconds.
        """
        while not self.done:
            try:
                raw = await asyncio.wait_for(self._ws.recv(), timeout)
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

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[OutputChunk]:
        while True:
            c = await self.recv()
            if c is None:
                return
            yield c

    async def read_until(self, text: Union[str, bytes], timeout: float = 60.0) -> bytes:
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
            c = await self.recv(timeout=left)
            if c is None:
                raise CairnError(f"the stream ended before {want!r}; got {got[-200:]!r}")
            got += c.data
        return got

    async def wait(self, timeout: Optional[float] = None) -> ExecResult:
        """Reads to the end; the output from here on and the exit code."""
        out, err = b"", b""
        while True:
            c = await self.recv(timeout)
            if c is None:
                break
            if c.kind == "stdout":
                out += c.data
            elif c.kind == "stderr":
                err += c.data
        code = self.exit_code if self.exit_code is not None else -1
        return ExecResult(out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), code, self.signal_number)

    async def detach(self) -> None:
        """Attached sessions: leaves the session running and ends this connection."""
        if not self.done:
            await self._ws.send(control_frame("detach"))
            async for _ in self:
                pass
        await self.close()

    async def close(self) -> None:
        """Closes the connection: an exec's process is killed, a session goes on."""
        self.done = True
        await self._ws.close()

    async def __aenter__(self) -> "AsyncProcess":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


async def open_exec(
    client: "AsyncClient",
    base: str,
    command: Union[str, List[str]],
    env: Optional[Dict[str, str]],
    cwd: Optional[str],
    tty: Optional[Tuple[int, int]],
    stdin: bool,
) -> AsyncProcess:
    """Starts an interactive exec on ``base`` + ``/exec``."""
    body = process_body(command, env, cwd, stdin, tty)
    ws = await ws_open(client.endpoint, base + "/exec")
    p = AsyncProcess(ws, session=False)
    try:
        await ws.send(json.dumps(body))
        await p._head()
    except BaseException:
        await ws.close()
        raise
    return p


class AsyncSessions:
    """The twin of :class:`Sessions`. Detached sessions in one sandbox (``sb.sessions``): processes that outlive their
    client, keep running across idle sleep and wake, and keep their output (bounded) until
    someone attaches."""

    def __init__(self, client: "AsyncClient", base: str) -> None:
        self._c = client
        self._base = base + "/sessions"

    async def start(
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
        d = (await self._c.request("POST", self._base, json=body)).json()
        return StartedSession(d["id"], d["pid"])

    async def list(self) -> List[SessionInfo]:
        """The sandbox's sessions, oldest first (ended ones too, until killed)."""
        return [SessionInfo.from_json(d) for d in (await self._c.request("GET", self._base)).json()]

    async def attach(self, id: int) -> AsyncProcess:
        """Attaches: the kept output comes first, then live output; :meth:`AsyncProcess.send`
        types into a session started with ``stdin=True``. Closing detaches."""
        ws = await ws_open(self._c.endpoint, f"{self._base}/{int(id)}/attach")
        p = AsyncProcess(ws, session=True)
        try:
            await p._head()
        except BaseException:
            await ws.close()
            raise
        return p

    async def kill(self, id: int) -> None:
        """Kills a session and forgets it."""
        await self._c.request("DELETE", f"{self._base}/{int(id)}")
