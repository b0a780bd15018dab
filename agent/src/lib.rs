//! The cairn guest agent protocol, guest agent and host client.
