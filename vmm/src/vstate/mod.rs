//! KVM state: the VM, its vCPUs and guest memory.

pub mod memory;
pub mod prewarm;
pub mod shared_memory;
pub mod vcpu;
pub mod vcpu_state;
pub mod vcpu_threads;
pub mod vm;

#[cfg(test)]
mod tests;
