"""cairn: persistent, checkpointable microVM sandboxes, driven over ``cairn serve``.

>>> from cairn import Sandbox
>>> with Sandbox.create("work") as sb:          # doctest: +SKIP
...     r = sb.exec("echo hi")
...     r.stdout
'hi\\n'

The async twin is :class:`AsyncSandbox`. See docs/sdk-python.md.
"""

from ._types import ExecResult, FileInfo, SandboxInfo, OutputChunk, CairnError, SessionInfo, StartedSession
from ._process import Process, Sessions
from ._aprocess import AsyncProcess, AsyncSessions
from ._sync import Sandbox, Client, Files
from ._async import AsyncSandbox, AsyncClient, AsyncFiles

__all__ = [
    "Sandbox",
    "Client",
    "Files",
    "AsyncSandbox",
    "AsyncClient",
    "AsyncFiles",
    "ExecResult",
    "FileInfo",
    "SandboxInfo",
    "OutputChunk",
    "CairnError",
    "SessionInfo",
    "StartedSession",
    "Process",
    "Sessions",
    "AsyncProcess",
    "AsyncSessions",
]
