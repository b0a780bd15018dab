//! x86_64: guest physical memory layout, boot protocols and vCPU register set-up.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod custom_template;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod page_tables;
pub mod regs;
pub mod static_templates;
