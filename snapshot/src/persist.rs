//! The `Persist` trait: save a component to a plain-data state, and rebuild it from one.

/// A stateful component that can be checkpointed.
///
/// There are deliberately no default methods: every implementor must say how it saves and restores
/// itself, so no component silently loses state.
pub trait Persist: Sized {
    /// Plain data (serde) describing everything needed to rebuild the component.
    type State;
    /// Whatever the component needs from its surroundings to be rebuilt (guest memory, fds, ...).
    type ConstructorArgs;
    /// Why a restore failed.
    type Error;

    /// Capture the component's state. The component must be quiesced (vCPUs paused).
    fn save(&self) -> Self::State;

    /// Rebuild the component from `state`.
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}
