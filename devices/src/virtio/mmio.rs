//! The virtio-mmio transport (in progress).
