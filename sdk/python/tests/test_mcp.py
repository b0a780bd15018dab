"""`cairn mcp` driven by the official MCP Python client (PyPI `mcp`) over stdio, on a real guest:
list tools, create a sandbox, run a command, write and read a file, checkpoint, change the
file, restore, see it back."""

from __future__ import annotations

import os
from pathlib import Path

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from conftest import REPO, Server, kvm_or_skip

TOOLS = {
    "create_sandbox", "list_sandboxes", "exec", "write_file", "read_file",
    "list_files", "checkpoint", "restore", "fork", "delete_sandbox",
}


def field(obj, snake: str, camel: str):
    """A result field under the `mcp` 2.x (snake_case) or 1.x (camelCase) name."""
    return getattr(obj, snake) if hasattr(obj, snake) else getattr(obj, camel)


def text(result) -> str:
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def test_an_agent_loop_over_mcp(server: Server) -> None:
    kvm_or_skip()
    cairn = os.environ.get("CAIRN_BIN", str(REPO / "target/debug/cairn"))
    params = StdioServerParameters(command=cairn, args=["mcp"], env=dict(server.env))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            init = await s.initialize()
            assert field(init, "server_info", "serverInfo").name == "cairn"
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert set(tools) == TOOLS
            for t in tools.values():
                assert field(t, "input_schema", "inputSchema")["type"] == "object" and len(t.description or "") > 40
            assert field(tools["exec"], "input_schema", "inputSchema")["required"] == ["name", "command"]

            async def call(tool: str, **args) -> str:
                for _ in range(8):  # this host's guest now and then loses a process (conftest.py)
                    r = await s.call_tool(tool, args)
                    t = text(r)
                    if "exit_code: 139" not in t and "closed the connection" not in t:
                        break
                assert not field(r, "is_error", "isError"), f"{tool}: {t}"
                return t

            await call("create_sandbox", name="mcp1", mem_mib=256)
            assert "mcp1" in await call("list_sandboxes")
            out = await call("exec", name="mcp1", command="echo hi && echo oops >&2; exit 2")
            assert "exit_code: 2" in out and "hi" in out and "oops" in out
            await call("write_file", name="mcp1", path="/root/notes.txt", content="first")
            assert await call("read_file", name="mcp1", path="/root/notes.txt") == "first"
            assert "notes.txt" in await call("list_files", name="mcp1", path="/root")
            await call("checkpoint", name="mcp1", checkpoint="good")
            await call("write_file", name="mcp1", path="/root/notes.txt", content="broken")
            assert await call("read_file", name="mcp1", path="/root/notes.txt") == "broken"
            await call("restore", name="mcp1", checkpoint="good")
            assert await call("read_file", name="mcp1", path="/root/notes.txt") == "first"
            bad = await s.call_tool("read_file", {"name": "mcp1", "path": "/root/../etc/shadow"})
            assert field(bad, "is_error", "isError") and ".." in text(bad)
            await call("delete_sandbox", name="mcp1")
            assert "mcp1" not in await call("list_sandboxes")
