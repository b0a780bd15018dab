//! The MMDS data store: one JSON document, replaced (`PUT /mmds`) or merged (`PATCH /mmds`, RFC
//! 7396) through the API, read by the guest path by path, and the settings that shape the guest's
//! view of it (version, EC2 IMDS compatibility, session tokens).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::token::{TokenAuthority, TokenError};

/// Firecracker's default data store limit when `--mmds-size-limit` is not given: the API's
/// largest request body (`--http-api-max-payload-size`, 51200 bytes by default).
pub const DEFAULT_MMDS_SIZE_LIMIT: usize = 51200;

/// Which MMDS protocol the guest speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// GET without a session token (a token, if given, is checked only for the metrics).
    #[default]
    V1,
    /// Session tokens: `PUT /latest/api/token` first, then every GET carries the token.
    V2,
}

impl std::fmt::Display for MmdsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MmdsVersion::V1 => "V1",
            MmdsVersion::V2 => "V2",
        })
    }
}

/// How a value is written back to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The value as JSON (`Accept: application/json`).
    Json,
    /// EC2 IMDS text: an object lists its keys (objects with a trailing `/`), a string is
    /// itself; other values cannot be shown.
    Imds,
}

/// Errors of the data store. The messages are Firecracker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmdsError {
    /// A PUT or PATCH would make the document larger than the limit.
    #[error("The MMDS patch request doesn't fit.")]
    DataStoreLimitExceeded,
    /// No value at the requested path.
    #[error("The MMDS resource does not exist.")]
    NotFound,
    /// PATCH before any PUT.
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    /// The value at the path is not an object or a string (IMDS format).
    #[error("Cannot retrieve value. The value has an unsupported type.")]
    UnsupportedValueType,
    /// A session token could not be made.
    #[error("Token Authority error: {0}")]
    Token(#[from] TokenError),
}

/// The data store and its settings, shared (behind a mutex) by the API and every network
/// interface that serves MMDS.
#[derive(Debug)]
pub struct Mmds {
    version: MmdsVersion,
    imds_compat: bool,
    data: Value,
    initialized: bool,
    limit: usize,
    tokens: TokenAuthority,
    rx_no_token: u64,
    rx_invalid_token: u64,
}

impl Mmds {
    /// An empty, uninitialized store that takes documents of up to `limit` bytes (serialized).
    pub fn new(limit: usize) -> Result<Self, MmdsError> {
        Ok(Self {
            version: MmdsVersion::default(),
            imds_compat: false,
            data: Value::Null,
            initialized: false,
            limit,
            tokens: TokenAuthority::new()?,
            rx_no_token: 0,
            rx_invalid_token: 0,
        })
    }

    /// The protocol version.
    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    /// Set the protocol version.
    pub fn set_version(&mut self, version: MmdsVersion) {
        self.version = version;
    }

    /// Whether replies are always IMDS text, whatever the request's `Accept` (EC2 IMDS does so).
    pub fn imds_compat(&self) -> bool {
        self.imds_compat
    }

    /// Set EC2 IMDS compatibility.
    pub fn set_imds_compat(&mut self, on: bool) {
        self.imds_compat = on;
    }

    /// Bind session tokens to this VM (Firecracker's `microvmid=` additional data): a token
    /// made for another instance id does not validate here.
    pub fn set_instance_id(&mut self, id: &str) {
        self.tokens.set_instance_id(id);
    }

    /// The size limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Replace the whole document.
    pub fn put_data(&mut self, data: Value) -> Result<(), MmdsError> {
        if serialized_len(&data) > self.limit {
            return Err(MmdsError::DataStoreLimitExceeded);
        }
        self.data = data;
        self.initialized = true;
        Ok(())
    }

    /// Merge `patch` into the document (RFC 7396). Refused before the first PUT, and when the
    /// result would exceed the limit (the document is then unchanged).
    pub fn patch_data(&mut self, patch: &Value) -> Result<(), MmdsError> {
        if !self.initialized {
            return Err(MmdsError::NotInitialized);
        }
        let mut next = self.data.clone();
        json_merge_patch(&mut next, patch);
        if serialized_len(&next) > self.limit {
            return Err(MmdsError::DataStoreLimitExceeded);
        }
        self.data = next;
        Ok(())
    }

    /// The whole document (`null` before the first PUT).
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// A new session token valid for `ttl_seconds` (1 to 21600).
    pub fn generate_token(&mut self, ttl_seconds: u32) -> Result<String, TokenError> {
        self.tokens.generate(ttl_seconds)
    }

    /// Whether `token` was made by this store and has not expired.
    pub fn is_valid_token(&self, token: &str) -> bool {
        self.tokens.is_valid(token)
    }

    /// Check the token of a guest GET (`None`: it had none) and count what was wrong with it,
    /// for Firecracker's `rx_no_token` and `rx_invalid_token` metrics. Returns whether it is valid.
    pub fn check_request_token(&mut self, token: Option<&str>) -> bool {
        match token {
            None => {
                self.rx_no_token += 1;
                false
            }
            Some(t) if !self.tokens.is_valid(t) => {
                self.rx_invalid_token += 1;
                false
            }
            Some(_) => true,
        }
    }

    /// Guest GETs without a token and with an invalid one, so far.
    pub fn token_counts(&self) -> (u64, u64) {
        (self.rx_no_token, self.rx_invalid_token)
    }

    /// The value at `path` (a JSON pointer such as `/latest/meta-data`; one trailing `/` is
    /// ignored) in `format`, or in IMDS text whatever `format` when EC2 compatibility is on.
    pub fn get_value(&self, path: &str, format: OutputFormat) -> Result<String, MmdsError> {
        let pointer = path.strip_suffix('/').unwrap_or(path);
        let value = self.data.pointer(pointer).ok_or(MmdsError::NotFound)?;
        match (self.imds_compat, format) {
            (false, OutputFormat::Json) => Ok(value.to_string()),
            _ => format_imds(value),
        }
    }
}

fn serialized_len(value: &Value) -> usize {
    // A Value always serializes (its map keys are strings).
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// Merge `patch` into `target` as RFC 7396 says: an object patch merges key by key (a `null`
/// removes the key), anything else replaces the target.
pub fn json_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(doc) = target {
        for (key, value) in patch {
            if value.is_null() {
                doc.remove(key);
            } else {
                json_merge_patch(doc.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// EC2 IMDS text: an object's keys, one a line, with a `/` after those holding objects; a string
/// as itself.
fn format_imds(value: &Value) -> Result<String, MmdsError> {
    match value {
        Value::Object(map) => Ok(map
            .iter()
            .map(|(k, v)| {
                if v.is_object() {
                    format!("{k}/")
                } else {
                    k.clone()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")),
        Value::String(s) => Ok(s.clone()),
        _ => Err(MmdsError::UnsupportedValueType),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn store(data: Value) -> Mmds {
        let mut m = Mmds::new(DEFAULT_MMDS_SIZE_LIMIT).unwrap();
        m.put_data(data).unwrap();
        m
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // The examples of RFC 7396, appendix A.
        for (target, patch, result) in [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ] {
            let mut t = target.clone();
            json_merge_patch(&mut t, &patch);
            assert_eq!(t, result, "{target} + {patch}");
        }
    }

    #[test]
    fn patch_needs_a_put_first_and_limits_hold() {
        let mut m = Mmds::new(64).unwrap();
        assert_eq!(m.data(), &Value::Null);
        assert_eq!(
            m.patch_data(&json!({"a": 1})),
            Err(MmdsError::NotInitialized)
        );
        m.put_data(json!({"a": "b"})).unwrap();
        m.patch_data(&json!({"c": "d"})).unwrap();
        assert_eq!(m.data(), &json!({"a": "b", "c": "d"}));
        let big = "x".repeat(64);
        assert_eq!(
            m.patch_data(&json!({ "e": big })),
            Err(MmdsError::DataStoreLimitExceeded)
        );
        assert_eq!(m.data(), &json!({"a": "b", "c": "d"}), "unchanged");
        assert_eq!(
            m.put_data(json!({ "e": big })),
            Err(MmdsError::DataStoreLimitExceeded)
        );
        // Exactly at the limit is fine.
        let at = "y".repeat(64 - r#"{"e":""}"#.len());
        m.put_data(json!({ "e": at })).unwrap();
    }

    #[test]
    fn values_in_json_and_imds_text() {
        let data = json!({
            "name": {"first": "John", "second": "Doe"},
            "age": 43,
            "phones": ["+401234567", "+441234567"],
            "member": false,
            "json_string": "{\n  \"hello\": \"world\"\n}",
        });
        for compat in [false, true] {
            let mut m = store(data.clone());
            m.set_imds_compat(compat);
            for format in [OutputFormat::Json, OutputFormat::Imds] {
                let imds = compat || format == OutputFormat::Imds;
                assert_eq!(m.get_value("/nope", format), Err(MmdsError::NotFound));
                let name = m.get_value("/name", format).unwrap();
                let name_slash = m.get_value("/name/", format).unwrap();
                assert_eq!(name, name_slash);
                if imds {
                    assert_eq!(name, "first\nsecond");
                    assert_eq!(
                        m.get_value("/", format).unwrap(),
                        "age\njson_string\nmember\nname/\nphones"
                    );
                    for p in ["/age", "/phones", "/member"] {
                        assert_eq!(m.get_value(p, format), Err(MmdsError::UnsupportedValueType));
                    }
                    assert_eq!(m.get_value("/phones/0", format).unwrap(), "+401234567");
                    assert_eq!(
                        m.get_value("/json_string", format).unwrap(),
                        "{\n  \"hello\": \"world\"\n}"
                    );
                } else {
                    assert_eq!(name, r#"{"first":"John","second":"Doe"}"#);
                    assert_eq!(m.get_value("/age", format).unwrap(), "43");
                    assert_eq!(
                        m.get_value("/phones", format).unwrap(),
                        r#"["+401234567","+441234567"]"#
                    );
                    assert_eq!(m.get_value("/phones/1/", format).unwrap(), "\"+441234567\"");
                    assert_eq!(m.get_value("/member", format).unwrap(), "false");
                }
            }
        }
    }

    #[test]
    fn settings_and_tokens() {
        let mut m = Mmds::new(10).unwrap();
        assert_eq!(m.version(), MmdsVersion::V1);
        assert_eq!(MmdsVersion::V2.to_string(), "V2");
        m.set_version(MmdsVersion::V2);
        assert_eq!(m.version(), MmdsVersion::V2);
        assert_eq!(m.limit(), 10);
        m.set_instance_id("vm1");
        let t = m.generate_token(60).unwrap();
        assert!(m.is_valid_token(&t));
        assert!(!m.is_valid_token("nope"));
        assert!(m.generate_token(0).is_err());
        // A token of another instance (or another store) does not validate.
        m.set_instance_id("vm2");
        assert!(!m.is_valid_token(&t));
        let other = Mmds::new(10).unwrap();
        assert!(!other.is_valid_token(&t));
    }
}
