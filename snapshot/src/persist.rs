//! The `Persist` trait: save a component to a plain-data state, and rebuild it from one.

/// A stateful component that can be checkpointed: each vCPU, the VM's in-kernel devices, every
/// device model and every virtio transport.
///
/// There are deliberately no default methods: every implementor must say how it saves and restores
/// itself, so no component silently loses state. The lifetime lets [`Persist::ConstructorArgs`]
/// borrow what the component is rebuilt inside (a vCPU borrows its VM).
pub trait Persist<'a>: Sized {
    /// Plain data (serde) describing everything needed to rebuild the component.
    type State;
    /// Whatever the component needs from its surroundings to be rebuilt (guest memory, fds, ...).
    type ConstructorArgs;
    /// Why a save or a restore failed.
    type Error;

    /// Capture the component's state. The component must be quiesced (vCPUs paused). Saving can
    /// fail where it means asking the kernel (a vCPU's registers, the VM's interrupt controllers).
    fn save(&self) -> Result<Self::State, Self::Error>;

    /// Rebuild the component from `state`.
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}
