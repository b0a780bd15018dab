"""The blocking client: :class:`Sandbox`, its :class:`Files`, and the :class:`Client` under them."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple, Union
from urllib.parse import quote

import httpx

from ._process import Process, Sessions, open_exec
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


class Client:
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
        transport = httpx.HTTPTransport(uds=self.endpoint.socket) if self.endpoint.socket and not self.endpoint.url else None
        self._http = httpx.Client(
            base_url=self.endpoint.base_url,
            transport=transport,
            headers=self.endpoint.headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """Sends a request to ``/v1`` + ``path``; raises :class:`CairnError` on 4xx/5xx."""
        resp = self._http.request(method, "/v1" + path, **kw)
        raise_for(resp)
        return resp

    def stream_lines(self, method: str, path: str, **kw: Any) -> Iterator[str]:
        """Sends a request and yields the answer's lines as they arrive."""
        with self._http.stream(method, "/v1" + path, **kw) as resp:
            if resp.status_code >= 400:
                raise_for(resp, resp.read())
            for line in resp.iter_lines():
                yield line

    def health(self) -> Dict[str, Any]:
        """The server's version (also checks the token)."""
        return self.request("GET", "/health").json()

    def list(self) -> List[SandboxInfo]:
        """Every sandbox."""
        return [SandboxInfo.from_json(d) for d in self.request("GET", "/sandboxes").json()]


def _q(name: str) -> str:
    return quote(name, safe="")


class Files:
    """File operations in one sandbox (``sb.files``). Paths are absolute guest paths."""

    def __init__(self, client: Client, name: str) -> None:
        self._c = client
        self._base = f"/sandboxes/{_q(name)}"

    def write(self, path: str, data: Union[str, bytes], mode: int = 0o644) -> None:
        """Writes a file (parents made, an existing file replaced)."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        self._c.request("PUT", self._base + "/files", params={"path": path, "mode": f"{mode:o}"}, content=raw)

    def read(self, path: str) -> bytes:
        """A file's bytes."""
        return self._c.request("GET", self._base + "/files", params={"path": path}).content

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """A file's text."""
        return self.read(path).decode(encoding, "replace")

    def list(self, path: str) -> List[FileInfo]:
        """A directory's entries, sorted by name."""
        r = self._c.request("GET", self._base + "/files/list", params={"path": path})
        return [FileInfo.from_json(d) for d in r.json()]

    def stat(self, path: str) -> FileInfo:
        """One path's kind, size, mode and mtime."""
        return FileInfo.from_json(self._c.request("GET", self._base + "/files/stat", params={"path": path}).json())

    def exists(self, path: str) -> bool:
        """Whether the path exists."""
        try:
            self.stat(path)
            return True
        except CairnError as e:
            if e.status == 404:
                return False
            raise

    def remove(self, path: str) -> None:
        """Deletes a file or a whole directory tree."""
        self._c.request("DELETE", self._base + "/files", params={"path": path})

    def download_tar(self, path: str) -> bytes:
        """The directory tree at ``path`` as a tar archive."""
        return self._c.request("GET", self._base + "/tree", params={"path": path}).content

    def upload_tar(self, path: str, tar: bytes) -> None:
        """Unpacks a tar archive into the directory ``path`` (made if missing)."""
        self._c.request("PUT", self._base + "/tree", params={"path": path}, content=tar)


class Sandbox:
    """A cairn sandbox: a persistent Linux microVM you can exec in, checkpoint, restore and fork.

    Make one with :meth:`create` or attach to one with :meth:`connect`. Used as a context
    manager it closes its connection on exit (and deletes the sandbox if
    ``delete_on_exit`` is set).
    """

    def __init__(self, name: str, client: Client, *, owns_client: bool = True, delete_on_exit: bool = False) -> None:
        self.name = name
        self._c = client
        self._owns = owns_client
        self.delete_on_exit = delete_on_exit
        self._base = f"/sandboxes/{_q(name)}"
        self.files = Files(client, name)
        #: Detached sessions: start, list, attach, kill.
        self.sessions = Sessions(client, self._base)

    @classmethod
    def create(
        cls,
        name: str,
        image: Optional[str] = None,
        *,
        cpus: Optional[int] = None,
        mem_mib: Optional[int] = None,
        disk_gib: Optional[int] = None,
        idle_timeout: Optional[int] = None,
        delete_on_exit: bool = False,
        client: Optional[Client] = None,
        url: Optional[str] = None,
        token: Optional[str] = None,
    ) -> "Sandbox":
        """Creates and boots a sandbox; returns when its agent answers."""
        c = client or Client(url, token=token)
        body: Dict[str, Any] = {"name": name}
        for k, v in (("image", image), ("cpus", cpus), ("mem_mib", mem_mib), ("disk_gib", disk_gib), ("idle_timeout", idle_timeout)):
            if v is not None:
                body[k] = v
        c.request("POST", "/sandboxes", json=body)
        return cls(name, c, owns_client=client is None, delete_on_exit=delete_on_exit)

    @classmethod
    def connect(cls, name: str, *, client: Optional[Client] = None, url: Optional[str] = None, token: Optional[str] = None) -> "Sandbox":
        """Attaches to an existing sandbox (a stopped one wakes on its first use)."""
        c = client or Client(url, token=token)
        c.request("GET", f"/sandboxes/{_q(name)}")
        return cls(name, c, owns_client=client is None)

    @staticmethod
    def list(*, client: Optional[Client] = None) -> List[SandboxInfo]:
        """Every sandbox."""
        if client is not None:
            return client.list()
        with Client() as c:
            return c.list()

    def info(self) -> SandboxInfo:
        """The sandbox's current state."""
        return SandboxInfo.from_json(self._c.request("GET", self._base).json())

    def exec(
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
        r = self._c.request("POST", self._base + "/exec", json=exec_body(command, env, cwd, stdin, False))
        return exec_result(r.content)

    def exec_stream(
        self,
        command: Union[str, List[str]],
        *,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Union[None, str, bytes] = None,
    ) -> Iterator[OutputChunk]:
        """Runs a command, yielding its output as it comes; the last chunk has kind ``exit``.

        Leaving the loop early (or closing the generator) kills the command.
        """
        body = exec_body(command, env, cwd, stdin, True)
        for line in self._c.stream_lines("POST", self._base + "/exec", json=body):
            chunk = parse_line(line)
            if chunk is not None:
                yield chunk

    def exec_interactive(
        self,
        command: Union[str, List[str]],
        *,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        tty: Optional[Tuple[int, int]] = None,
        stdin: bool = True,
    ) -> Process:
        """Starts a command you can type into (over a WebSocket): write with
        :meth:`Process.send`, read its output by iterating, end stdin with
        :meth:`Process.close_stdin`. ``tty``: run under a terminal of ``(rows, cols)``.

        Closing the process (or leaving its ``with`` block) before it ends kills it.
        """
        return open_exec(self._c, self._base, command, env, cwd, tty, stdin)

    def checkpoint(self, name: Optional[str] = None) -> Dict[str, Any]:
        """Takes a checkpoint (memory, processes and disk); returns its metadata."""
        body = {"name": name} if name else {}
        return self._c.request("POST", self._base + "/checkpoints", json=body).json()

    def checkpoints(self) -> List[Dict[str, Any]]:
        """The sandbox's checkpoints with their costs."""
        return self._c.request("GET", self._base + "/checkpoints").json()

    def restore(self, checkpoint: str) -> None:
        """Rolls the whole sandbox back (or forward) to a checkpoint."""
        self._c.request("POST", f"{self._base}/checkpoints/{_q(checkpoint)}/restore")

    def delete_checkpoint(self, checkpoint: str) -> None:
        """Deletes a checkpoint."""
        self._c.request("DELETE", f"{self._base}/checkpoints/{_q(checkpoint)}")

    def fork(self, checkpoint: str, new_name: str) -> "Sandbox":
        """A new, started sandbox made from one of this one's checkpoints (copy-on-write)."""
        self._c.request("POST", self._base + "/fork", json={"checkpoint": checkpoint, "new_name": new_name})
        return Sandbox(new_name, self._c, owns_client=False)

    def stop(self) -> Optional[str]:
        """Checkpoints the sandbox and stops its VM; returns the checkpoint taken."""
        return self._c.request("POST", self._base + "/stop").json()["checkpoint"]

    def start(self, cold: bool = False) -> str:
        """Starts a stopped sandbox (``cold``: boot afresh from its disk)."""
        return self._c.request("POST", self._base + "/start", json={"cold": cold}).json()["result"]

    def delete(self) -> None:
        """Deletes the sandbox: VM, disk and checkpoints."""
        self._c.request("DELETE", self._base)

    def close(self) -> None:
        """Closes the connection (if this object made it)."""
        if self._owns:
            self._c.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.delete_on_exit:
                self.delete()
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r})"
