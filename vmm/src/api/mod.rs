//! The REST API server (in progress).
