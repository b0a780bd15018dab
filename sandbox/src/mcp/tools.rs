//! The MCP tools: their JSON schemas and descriptions, and each call run through
//! [`crate::serve::ops`]. Arguments are named alike across tools: `name` (the sandbox),
//! `command` (a shell line, run with `sh -c`), `path`, `content`, `checkpoint`, `new_name`.

use crate::sandbox::Home;
use crate::serve::ops::{self, CreateRequest, ExecSpec, OpsError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How much of each output stream an exec result carries (the rest is cut, and says so).
pub const MAX_OUTPUT: usize = 64 << 10;

/// A tool as `tools/list` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    name: &'static str,
    description: &'static str,
    input_schema: Value,
}

/// `tools/list`'s result.
#[derive(Debug, Serialize)]
pub struct ToolList {
    tools: Vec<Tool>,
}

/// `tools/call`'s params.
#[derive(Debug, Deserialize)]
pub struct Call {
    /// The tool.
    pub name: String,
    /// Its arguments.
    #[serde(default)]
    pub arguments: Option<Value>,
}

/// `tools/call`'s result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallResult {
    content: Vec<Content>,
    #[serde(skip_serializing_if = "Option::is_none")]
    structured_content: Option<Value>,
    is_error: bool,
}

#[derive(Debug, Serialize)]
struct Content {
    #[serde(rename = "type")]
    kind: &'static str,
    text: String,
}

impl CallResult {
    fn text(text: String, structured: Option<Value>) -> CallResult {
        CallResult {
            content: vec![Content { kind: "text", text }],
            structured_content: structured,
            is_error: false,
        }
    }

    fn error(text: String) -> CallResult {
        CallResult {
            content: vec![Content { kind: "text", text }],
            structured_content: None,
            is_error: true,
        }
    }
}

fn schema(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

fn name_prop() -> Value {
    json!({"type": "string", "description": "The sandbox's name."})
}

fn path_prop() -> Value {
    json!({"type": "string", "description": "An absolute path in the sandbox, e.g. /root/app/main.py (no '..')."})
}

/// Every tool, in a fixed order.
pub fn list() -> ToolList {
    let tools = vec![
        Tool {
            name: "create_sandbox",
            description: "Create and boot a new sandbox: a persistent Linux microVM (Debian) with a shell, \
                          its own disk and network stack. Takes seconds to a minute. Use a short name such as \
                          'work'; it fails if the name is taken (list_sandboxes shows existing ones).",
            input_schema: schema(
                json!({"name": {"type": "string", "description": "New sandbox name: 1-40 of a-z A-Z 0-9 . _ -, starting with a letter or digit."},
                       "cpus": {"type": "integer", "minimum": 1, "maximum": 32, "description": "vCPUs (default 1)."},
                       "mem_mib": {"type": "integer", "minimum": 128, "description": "Memory in MiB (default 512)."}}),
                &["name"],
            ),
        },
        Tool {
            name: "list_sandboxes",
            description: "List the sandboxes with their state (running, stopped, ...) and head checkpoint. \
                          A stopped sandbox wakes by itself when used.",
            input_schema: schema(json!({}), &[]),
        },
        Tool {
            name: "exec",
            description: "Run a shell command line in a sandbox (with sh -c, as root, cwd /) and wait for it. \
                          Returns the exit code, stdout and stderr. A non-zero exit code is reported, not \
                          raised: read stderr and fix the command. Pipes, && and redirections work.",
            input_schema: schema(
                json!({"name": name_prop(),
                       "command": {"type": "string", "description": "The shell command line, e.g. 'cd /root/app && python3 -m pytest -q'."}}),
                &["name", "command"],
            ),
        },
        Tool {
            name: "write_file",
            description: "Write a text file in a sandbox (parent directories are created, an existing file \
                          is replaced, mode 644).",
            input_schema: schema(
                json!({"name": name_prop(), "path": path_prop(),
                       "content": {"type": "string", "description": "The whole new content of the file."}}),
                &["name", "path", "content"],
            ),
        },
        Tool {
            name: "read_file",
            description: "Read a file from a sandbox as text (invalid UTF-8 is replaced). For directories use \
                          list_files.",
            input_schema: schema(json!({"name": name_prop(), "path": path_prop()}), &["name", "path"]),
        },
        Tool {
            name: "list_files",
            description: "List a directory in a sandbox: one entry per line with kind (file, dir, symlink), \
                          size in bytes and name.",
            input_schema: schema(json!({"name": name_prop(), "path": path_prop()}), &["name", "path"]),
        },
        Tool {
            name: "checkpoint",
            description: "Save the whole sandbox (memory, processes and disk) as a named checkpoint, cheaply. \
                          Take one before a risky change; restore goes back to it.",
            input_schema: schema(
                json!({"name": name_prop(),
                       "checkpoint": {"type": "string", "description": "A checkpoint name (1-40 of a-z A-Z 0-9 . _ -); default: a timestamped one."}}),
                &["name"],
            ),
        },
        Tool {
            name: "restore",
            description: "Roll a sandbox back to one of its checkpoints: files, memory and processes become \
                          exactly what they were when it was taken. Later changes are lost.",
            input_schema: schema(
                json!({"name": name_prop(),
                       "checkpoint": {"type": "string", "description": "The checkpoint to go back to."}}),
                &["name", "checkpoint"],
            ),
        },
        Tool {
            name: "fork",
            description: "Make a new sandbox from a checkpoint of an existing one (copy-on-write, fast) and \
                          start it, e.g. to try two approaches side by side. The original is untouched.",
            input_schema: schema(
                json!({"name": name_prop(),
                       "checkpoint": {"type": "string", "description": "The original's checkpoint to start from."},
                       "new_name": {"type": "string", "description": "The new sandbox's name."}}),
                &["name", "checkpoint", "new_name"],
            ),
        },
        Tool {
            name: "delete_sandbox",
            description: "Delete a sandbox for good: its VM, disk and checkpoints. This cannot be undone.",
            input_schema: schema(json!({"name": name_prop()}), &["name"]),
        },
    ];
    ToolList { tools }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    name: String,
    #[serde(default)]
    cpus: Option<u8>,
    #[serde(default)]
    mem_mib: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameArgs {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecArgs {
    name: String,
    command: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    name: String,
    path: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathArgs {
    name: String,
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointArgs {
    name: String,
    #[serde(default)]
    checkpoint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreArgs {
    name: String,
    checkpoint: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForkArgs {
    name: String,
    checkpoint: String,
    new_name: String,
}

fn args<T: DeserializeOwned>(call: &Call) -> Result<T, OpsError> {
    let v = call
        .arguments
        .clone()
        .unwrap_or(Value::Object(Default::default()));
    serde_json::from_value(v).map_err(|e| {
        OpsError::BadRequest(format!(
            "bad arguments for {}: {e} (see the tool's inputSchema)",
            call.name
        ))
    })
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_OUTPUT {
        return s.to_string();
    }
    let mut cut = MAX_OUTPUT;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n[... {} more bytes cut]", &s[..cut], s.len() - cut)
}

fn json_of<T: Serialize>(v: &T) -> Option<Value> {
    serde_json::to_value(v).ok()
}

/// Runs a tool; `None` when there is no tool of that name.
pub fn call(home: &Home, call: &Call) -> Option<CallResult> {
    let r = match call.name.as_str() {
        "create_sandbox" => run_create(home, call),
        "list_sandboxes" => run_list(home, call),
        "exec" => run_exec(home, call),
        "write_file" => args::<WriteArgs>(call).and_then(|a| {
            ops::write_file(home, &a.name, &a.path, a.content.as_bytes(), 0o644)?;
            Ok(CallResult::text(
                format!("wrote {} bytes to {}", a.content.len(), a.path),
                None,
            ))
        }),
        "read_file" => args::<PathArgs>(call).and_then(|a| {
            let data = ops::read_file(home, &a.name, &a.path)?;
            Ok(CallResult::text(
                clip(&String::from_utf8_lossy(&data)),
                None,
            ))
        }),
        "list_files" => args::<PathArgs>(call).and_then(|a| {
            let list = ops::list_files(home, &a.name, &a.path)?;
            let text: String = list
                .iter()
                .map(|f| format!("{}\t{}\t{}\n", f.kind, f.size, f.name))
                .collect();
            let text = if text.is_empty() {
                "(empty directory)".to_string()
            } else {
                text
            };
            Ok(CallResult::text(text, json_of(&json!({ "entries": list }))))
        }),
        "checkpoint" => args::<CheckpointArgs>(call).and_then(|a| {
            let meta = ops::checkpoint_create(home, &a.name, a.checkpoint.as_deref())?;
            let taken = meta
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            Ok(CallResult::text(
                format!("checkpoint {taken} taken of {}", a.name),
                Some(meta),
            ))
        }),
        "restore" => args::<RestoreArgs>(call).and_then(|a| {
            ops::check_checkpoint_name(&a.checkpoint)?;
            crate::sandbox::checkpoint_restore(home, &a.name, &a.checkpoint)?;
            Ok(CallResult::text(
                format!("{} restored to checkpoint {}", a.name, a.checkpoint),
                None,
            ))
        }),
        "fork" => args::<ForkArgs>(call).and_then(|a| {
            let info = ops::fork(home, &a.name, &a.checkpoint, &a.new_name)?;
            Ok(CallResult::text(
                format!(
                    "{} forked from {} at {} ({})",
                    info.name, a.name, a.checkpoint, info.state
                ),
                json_of(&info),
            ))
        }),
        "delete_sandbox" => args::<NameArgs>(call).and_then(|a| {
            crate::sandbox::remove(home, &a.name)?;
            Ok(CallResult::text(format!("{} deleted", a.name), None))
        }),
        _ => return None,
    };
    Some(r.unwrap_or_else(|e| CallResult::error(cairn_agent::error_text(&e))))
}

fn run_create(home: &Home, call: &Call) -> Result<CallResult, OpsError> {
    let a: CreateArgs = args(call)?;
    let info = ops::create(
        home,
        &CreateRequest {
            name: a.name,
            cpus: a.cpus,
            mem_mib: a.mem_mib,
            ..Default::default()
        },
    )?;
    Ok(CallResult::text(
        format!(
            "sandbox {} is {} ({} vCPU, {} MiB)",
            info.name, info.state, info.cpus, info.mem_mib
        ),
        json_of(&info),
    ))
}

fn run_list(home: &Home, call: &Call) -> Result<CallResult, OpsError> {
    let _: NoArgs = args(call)?;
    let list = ops::list(home)?;
    let text: String = list
        .iter()
        .map(|s| {
            format!(
                "{}\t{}\thead={}\n",
                s.name,
                s.state,
                s.head_checkpoint.as_deref().unwrap_or("-")
            )
        })
        .collect();
    let text = if text.is_empty() {
        "(no sandboxes)".to_string()
    } else {
        text
    };
    Ok(CallResult::text(
        text,
        json_of(&json!({ "sandboxes": list })),
    ))
}

fn run_exec(home: &Home, call: &Call) -> Result<CallResult, OpsError> {
    let a: ExecArgs = args(call)?;
    let spec = ExecSpec {
        argv: ops::shell(&a.command),
        ..Default::default()
    };
    let r = ops::exec_collect(home, &a.name, spec)?;
    let text = format!(
        "exit_code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        r.exit_code,
        clip(&r.stdout),
        clip(&r.stderr)
    );
    Ok(CallResult::text(text, json_of(&r)))
}
