//! `logger` and `metrics`: accepted for Firecracker compatibility and validated.

use std::fmt;
use std::path::PathBuf;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::{validate_path, ConfigError, Validate};

/// Firecracker's log level. Parsed without regard to case; `Warn` is accepted for `Warning`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings (Firecracker's default).
    #[default]
    Warning,
    /// Informational messages too.
    Info,
    /// Debug messages too.
    Debug,
    /// Everything.
    Trace,
}

const LOG_LEVEL_NAMES: &[&str] = &["Off", "Error", "Warning", "Info", "Debug", "Trace"];

impl LogLevel {
    /// The Firecracker name (`"Warning"`).
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Off => "Off",
            LogLevel::Error => "Error",
            LogLevel::Warning => "Warning",
            LogLevel::Info => "Info",
            LogLevel::Debug => "Debug",
            LogLevel::Trace => "Trace",
        }
    }

    /// The matching `tracing` filter directive (`"warn"`).
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warning => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for LogLevel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(match text.to_ascii_lowercase().as_str() {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warning" | "warn" => LogLevel::Warning,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return Err(de::Error::unknown_variant(&text, LOG_LEVEL_NAMES)),
        })
    }
}

/// Firecracker's `logger` / `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// File (often a named pipe) the log goes to; standard error when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Least severe level written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Prefix each line with its level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix each line with its source file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log from this module path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl Validate for LoggerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.log_path {
            validate_path("log_path", path)?;
        }
        if let Some(module) = &self.module {
            if module.is_empty() {
                return Err(ConfigError::invalid("module", "must not be empty"));
            }
        }
        Ok(())
    }
}

/// Firecracker's `metrics` / `PUT /metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// File (often a named pipe) metrics are written to, one JSON object per flush.
    pub metrics_path: PathBuf,
}

impl Validate for MetricsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_path("metrics_path", &self.metrics_path)
    }
}
