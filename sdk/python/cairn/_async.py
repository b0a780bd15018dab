"""The async twin of the blocking client: :class:`AsyncSandbox`, :class:`AsyncFiles`, :class:`AsyncClient`."""

from __future__ import annotations

from typing import Any, AsyncIterator, Dict, List, Optional, Tuple, Union
from urllib.parse import quote

import httpx

from ._aprocess import AsyncProcess, AsyncSessions, open_exec
from ._types import (
    CairnError,
    Endpoint,
    ExecResult,
    FileInfo,
    OutputChunk,
    SandboxInfo,
    exec_body,
    exec_result,
    parse_line,
    raise_for,
)


class AsyncClient:
    """An HTTP connection to ``cairn serve`` (its Unix socket by default, or ``url``).

    The token is read from ``CAIRN_TOKEN`` or ``$CAIRN_HOME/serve.token`` unless given.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        socket: Optional[str] = None,
        token: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> None:
        self.endpoint = Endpoint.resolve(url, socket, token, timeout)
        transport = httpx.AsyncHTTPTransport(uds=self.endpoint.socket) if self.endpoint.socket and not self.endpoint.url else None
        self._http = httpx.AsyncClient(
            base_url=self.endpoint.base_url,
            transport=transport,
            headers=self.endpoint.headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    async def close(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """Sends a request to ``/v1`` + ``path``; raises :class:`CairnError` on 4xx/5xx."""
        resp = await self._http.request(method, "/v1" + path, **kw)
        raise_for(resp)
        return resp

    async def stream_lines(self, method: str, path: str, **kw: Any) -> AsyncIterator[str]:
        """Sends a request and yields the answer's lines as they arrive."""
        async with self._http.stream(method, "/v1" + path, **kw) as resp:
            if resp.status_code >= 400:
                raise_for(resp, await resp.aread())
            async for line in resp.aiter_lines():
                yield line

    async def health(self) -> Dict[str, Any]:
        """The server's version (also checks the token)."""
        return (await self.request("GET", "/health")).json()

    async def list(self) -> List[SandboxInfo]:
        """Every sandbox."""
        return [SandboxInfo.from_json(d) for d in (await self.request("GET", "/sandboxes")).json()]


def _q(name: str) -> str:
    return quote(name, safe="")


class AsyncFiles:
    """File operations in one sandbox (``sb.files``). Paths are absolute guest paths."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._c = client
        self._base = f"/sandboxes/{_q(name)}"

    async def write(self, path: str, data: Union[str, bytes], mode: int = 0o644) -> None:
        """Writes a file (parents made, an existing file replaced)."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        await self._c.request("PUT", self._base + "/files", params={"path": path, "mode": f"{mode:o}"}, content=raw)

    async def read(self, path: str) -> bytes:
        """A file's bytes."""
        return (await self._c.request("GET", self._base + "/files", params={"path": path})).content

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """A file's text."""
        return (await self.read(path)).decode(encoding, "replace")

    async def list(self, path: str) -> List[FileInfo]:
        """A directory's entries, sorted by name."""
        r = await self._c.request("GET", self._base + "/files/list", params={"path": path})
        return [FileInfo.from_json(d) for d in r.json()]

    async def stat(self, path: str) -> FileInfo:
        """One path's kind, size, mode and mtime."""
        return FileInfo.from_json((await self._c.request("GET", self._base + "/files/stat", params={"path": path})).json())

    async def exists(self, path: str) -> bool:
        """Whether the path exists."""
        try:
            await self.stat(path)
            return True
        except CairnError as e:
            if e.status == 404:
                return False
            raise

    async def remove(self, path: str) -> None:
        """Deletes a file or a whole directory tree."""
        await self._c.request("DELETE", self._base + "/files", params={"path": path})

    async def download_tar(self, path: str) -> bytes:
        """The directory tree at ``path`` as a tar archive."""
        return (await self._c.request("GET", self._base + "/tree", params={"path": path})).content

    async def upload_tar(self, path: str, tar: bytes) -> None:
        """Unpacks a tar archive into the directory ``path`` (made if missing)."""
        await self._c.request("PUT", self._base + "/tree", params={"path": path}, content=tar)


class AsyncSandbox:
    """A cairn sandbox: a persistent Linux microVM you can exec in, checkpoint, restore and fork.

    Make one with :meth:`create` or attach to one with :meth:`connect`. Used as a context
    manager it closes its connection on exit (and deletes the sandbox if
    ``delete_on_exit`` is set).
    """

    def __init__(self, name: str, client: AsyncClient, *, owns_client: bool = True, delete_on_exit: bool = False) -> None:
        self.name = name
        self._c = client
        self._owns = owns_client
        self.delete_on_exit = delete_on_exit
        self._base = f"/sandboxes/{_q(name)}"
        self.files = AsyncFiles(client, name)
        #: Detached sessions: start, list, attach, kill.
        self.sessions = AsyncSessions(client, self._base)

    @classmethod
    async def create(
        cls,
        name: str,
        image: Optional[str] = None,
        *,
        cpus: Optional[int] = None,
        mem_mib: Optional[int] = None,
        disk_gib: Optional[int] = None,
        idle_timeout: Optional[int] = None,
        delete_on_exit: bool = False,
        client: Optional[AsyncClient] = None,
        url: Optional[str] = None,
        token: Optional[str] = None,
    ) -> "AsyncSandbox":
        """Creates and boots a sandbox; returns when its agent answers."""
        c = client or AsyncClient(url, token=token)
        body: Dict[str, Any] = {"name": name}
        for k, v in (("image", image), ("cpus", cpus), ("mem_mib", mem_mib), ("disk_gib", disk_gib), ("idle_timeout", idle_timeout)):
            if v is not None:
                body[k] = v
        await c.request("POST", "/sandboxes", json=body)
        return cls(name, c, owns_client=client is None, delete_on_exit=delete_on_exit)

    @classmethod
    async def connect(cls, name: str, *, client: Optional[AsyncClient] = None, url: Optional[str] = None, token: Optional[str] = None) -> "AsyncSandbox":
        """Attaches to an existing sandbox (a stopped one wakes on its first use)."""
        c = client or AsyncClient(url, token=token)
        await c.request("GET", f"/sandboxes/{_q(name)}")
        return cls(name, c, owns_client=client is None)

    @staticmethod
    async def list(*, client: Optional[AsyncClient] = None) -> List[SandboxInfo]:
        """Every sandbox."""
        if client is not None:
            return await client.list()
        async with AsyncClient() as c:
            return await c.list()

    async def info(self) -> SandboxInfo:
        """The sandbox's current state."""
        return SandboxInfo.from_json((await self._c.request("GET", self._base)).json())

    async def exec(
        self,
        command: Union[str, List[str]],
        *,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Union[None, str, bytes] = None,
    ) -> ExecResult:
        """Runs a command to its end: a string runs with ``sh -c``, a list as argv.

        A non-zero exit code is returned, not raised.
        """
        r = await self._c.request("POST", self._base + "/exec", json=exec_body(command, env, cwd, stdin, False))
        return exec_result(r.content)

    async def exec_stream(
        self,
        command: Union[str, List[str]],
        *,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Union[None, str, bytes] = None,
    ) -> AsyncIterator[OutputChunk]:
        """Runs a command, yielding its output as it comes; the last chunk has kind ``exit``.

        Leaving the loop early (or closing the generator) kills the command.
        """
        body = exec_body(command, env, cwd, stdin, True)
        async for line in self._c.stream_lines("POST", self._base + "/exec", json=body):
            chunk = parse_line(line)
            if chunk is not None:
                yield chunk

    async def exec_interactive(
        self,
        command: Union[str, List[str]],
        *,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        tty: Optional[Tuple[int, int]] = None,
        stdin: bool = True,
    ) -> AsyncProcess:
        """Starts a command you can type into (the twin of :meth:`Sandbox.exec_interactive`).

        Closing the process before it ends kills it.
        """
        return await open_exec(self._c, self._base, command, env, cwd, tty, stdin)

    async def checkpoint(self, name: Optional[str] = None) -> Dict[str, Any]:
        """Takes a checkpoint (memory, processes and disk); returns its metadata."""
        body = {"name": name} if name else {}
        return (await self._c.request("POST", self._base + "/checkpoints", json=body)).json()

    async def checkpoints(self) -> List[Dict[str, Any]]:
        """The sandbox's checkpoints with their costs."""
        return (await self._c.request("GET", self._base + "/checkpoints")).json()

    async def restore(self, checkpoint: str) -> None:
        """Rolls the whole sandbox back (or forward) to a checkpoint."""
        await self._c.request("POST", f"{self._base}/checkpoints/{_q(checkpoint)}/restore")

    async def delete_checkpoint(self, checkpoint: str) -> None:
        """Deletes a checkpoint."""
        await self._c.request("DELETE", f"{self._base}/checkpoints/{_q(checkpoint)}")

    async def fork(self, checkpoint: str, new_name: str) -> "AsyncSandbox":
        """A new, started sandbox made from one of this one's checkpoints (copy-on-write)."""
        await self._c.request("POST", self._base + "/fork", json={"checkpoint": checkpoint, "new_name": new_name})
        return AsyncSandbox(new_name, self._c, owns_client=False)

    async def stop(self) -> Optional[str]:
        """Checkpoints the sandbox and stops its VM; returns the checkpoint taken."""
        return (await self._c.request("POST", self._base + "/stop")).json()["checkpoint"]

    async def start(self, cold: bool = False) -> str:
        """Starts a stopped sandbox (``cold``: boot afresh from its disk)."""
        return (await self._c.request("POST", self._base + "/start", json={"cold": cold})).json()["result"]

    async def delete(self) -> None:
        """Deletes the sandbox: VM, disk and checkpoints."""
        await self._c.request("DELETE", self._base)

    async def close(self) -> None:
        """Closes the connection (if this object made it)."""
        if self._owns:
            await self._c.close()

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            if self.delete_on_exit:
                await self.delete()
        finally:
            await self.close()

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r})"
