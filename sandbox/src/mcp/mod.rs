//! `cairn mcp`: a Model Context Protocol server on stdio, so that an agent can use sandboxes
//! as tools. JSON-RPC 2.0, one message per line; the methods `initialize`, `ping`,
//! `tools/list` and `tools/call` (and the `notifications/*` a client sends, which get no
//! answer). The tools ([`tools`]) run the same library calls as `cairn serve` and the CLI.
//! See `docs/mcp.md`.

pub mod tools;

use crate::sandbox::Home;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{self, BufRead, Write};

/// The protocol versions this server speaks, newest first; it answers a client with the
/// version it asked for when it is one of these, else with the newest.
pub const PROTOCOL_VERSIONS: &[&str] = &["2025-06-18", "2025-03-26", "2024-11-05"];

/// The largest line read from the client (bigger ones are refused with a parse error).
pub const MAX_LINE: usize = 8 << 20;

/// A JSON-RPC request or notification from the client.
#[derive(Debug, Deserialize)]
struct Incoming {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
}

/// A JSON-RPC answer.
#[derive(Debug, Serialize)]
struct Outgoing {
    jsonrpc: &'static str,
    id: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RpcError>,
}

/// A JSON-RPC error object.
#[derive(Debug, Serialize)]
pub struct RpcError {
    /// JSON-RPC error code.
    pub code: i64,
    /// What went wrong.
    pub message: String,
}

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InitializeResult {
    protocol_version: String,
    capabilities: Capabilities,
    server_info: ServerInfo,
    instructions: &'static str,
}

#[derive(Debug, Serialize)]
struct Capabilities {
    tools: ToolsCapability,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolsCapability {
    list_changed: bool,
}

#[derive(Debug, Serialize)]
struct ServerInfo {
    name: &'static str,
    version: &'static str,
}

const INSTRUCTIONS: &str = "cairn sandboxes are persistent Linux microVMs. Create one with \
create_sandbox, run shell commands in it with exec, move files with write_file/read_file, \
and take a checkpoint before anything risky: restore rolls the whole VM (files and \
processes) back to it. A stopped or idle sandbox wakes on its next use.";

/// Serves MCP on `input`/`output` until `input` ends.
pub fn run(home: &Home, input: impl BufRead, mut output: impl Write) -> io::Result<()> {
    let mut lines = input.split(b'\n');
    while let Some(line) = lines.next().transpose()? {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Some(reply) = handle_line(home, &line) {
            let mut text = serde_json::to_vec(&reply).map_err(io::Error::other)?;
            text.push(b'\n');
            output.write_all(&text)?;
            output.flush()?;
        }
    }
    Ok(())
}

fn reply(id: Value, r: Result<Value, RpcError>) -> Outgoing {
    let (result, error) = match r {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    Outgoing {
        jsonrpc: "2.0",
        id,
        result,
        error,
    }
}

/// Answers one line; `None` for notifications.
fn handle_line(home: &Home, line: &[u8]) -> Option<Outgoing> {
    if line.len() > MAX_LINE {
        return Some(reply(
            Value::Null,
            Err(rpc(PARSE_ERROR, "message too long")),
        ));
    }
    let msg: Incoming = match serde_json::from_slice(line) {
        Ok(m) => m,
        Err(e) => {
            return Some(reply(
                Value::Null,
                Err(rpc(PARSE_ERROR, &format!("parse error: {e}"))),
            ))
        }
    };
    let Some(method) = msg.method else {
        // A response to a request we never sent, or junk: nothing to answer.
        return msg
            .id
            .map(|id| reply(id, Err(rpc(INVALID_REQUEST, "no method"))));
    };
    // Notifications (no id) are never answered.
    let id = msg.id?;
    Some(reply(
        id,
        dispatch(home, &method, msg.params.unwrap_or(Value::Null)),
    ))
}

fn rpc(code: i64, message: &str) -> RpcError {
    RpcError {
        code,
        message: message.to_string(),
    }
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| rpc(-32603, &e.to_string()))
}

fn dispatch(home: &Home, method: &str, params: Value) -> Result<Value, RpcError> {
    match method {
        "initialize" => {
            let asked = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let version = PROTOCOL_VERSIONS
                .iter()
                .find(|v| **v == asked)
                .unwrap_or(&PROTOCOL_VERSIONS[0]);
            to_value(&InitializeResult {
                protocol_version: version.to_string(),
                capabilities: Capabilities {
                    tools: ToolsCapability {
                        list_changed: false,
                    },
                },
                server_info: ServerInfo {
                    name: "cairn",
                    version: env!("CARGO_PKG_VERSION"),
                },
                instructions: INSTRUCTIONS,
            })
        }
        "ping" => Ok(Value::Object(Default::default())),
        "tools/list" => to_value(&tools::list()),
        "tools/call" => {
            let call: tools::Call = serde_json::from_value(params)
                .map_err(|e| rpc(INVALID_PARAMS, &format!("tools/call params: {e}")))?;
            match tools::call(home, &call) {
                Some(result) => to_value(&result),
                None => Err(rpc(
                    INVALID_PARAMS,
                    &format!("unknown tool {:?} (tools/list lists them)", call.name),
                )),
            }
        }
        other => Err(rpc(
            METHOD_NOT_FOUND,
            &format!("method {other:?} not found"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(input: &str) -> Vec<Value> {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path()).unwrap();
        let mut out = Vec::new();
        run(&home, input.as_bytes(), &mut out).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_handshake_and_a_tool_list() {
        let out = session(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "\n\n",
            r#"{"jsonrpc":"2.0","id":"two","method":"tools/list"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
            "\n",
        ));
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0]["id"], 1);
        assert_eq!(out[0]["result"]["protocolVersion"], "2025-03-26");
        assert_eq!(out[0]["result"]["serverInfo"]["name"], "cairn");
        assert_eq!(out[1]["id"], "two");
        let names: Vec<&str> = out[1]["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "create_sandbox",
                "list_sandboxes",
                "exec",
                "write_file",
                "read_file",
                "list_files",
                "checkpoint",
                "restore",
                "fork",
                "delete_sandbox"
            ]
        );
        for t in out[1]["result"]["tools"].as_array().unwrap() {
            assert_eq!(t["inputSchema"]["type"], "object", "{t}");
            assert!(t["description"].as_str().unwrap().len() > 40, "{t}");
        }
        assert_eq!(out[2]["result"], serde_json::json!({}));
    }

    #[test]
    fn bad_messages_get_json_rpc_errors() {
        let out = session(concat!(
            "{not json\n",
            r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"rm_rf","arguments":{}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"exec","arguments":{"name":"x"}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"read_file","arguments":{"name":"x","path":"/a/../b"}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"list_sandboxes","arguments":{}}}"#,
            "\n",
        ));
        assert_eq!(out[0]["error"]["code"], PARSE_ERROR);
        assert_eq!(out[1]["error"]["code"], METHOD_NOT_FOUND);
        assert_eq!(out[2]["error"]["code"], INVALID_PARAMS);
        // Tool-level failures are results with isError, which the model can read and act on.
        assert_eq!(out[3]["result"]["isError"], true);
        assert!(out[3]["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("command"));
        assert_eq!(out[4]["result"]["isError"], true);
        assert_eq!(out[5]["result"]["isError"], false);
    }
}
