//! virtio-balloon (virtio 1.2, section 5.5): the host asks the guest to give back memory.
//!
//! The host sets a target (`num_pages`, 4 KiB pages) in the configuration space; the driver
//! inflates the balloon by handing page frame numbers over on the inflate queue (the device
//! then drops those pages from the host with `madvise(MADV_DONTNEED)`), deflates it on the
//! deflate queue, and reports how many pages it holds in `actual`. With statistics on, the
//! driver keeps one buffer on the statistics queue; every polling interval the device hands it
//! back and the driver refills it with its memory statistics.
//!
//! Two optional queues hand free guest memory back to the host without inflating the balloon:
//! free page hinting (the host starts a run with a command id in the configuration space; the
//! driver hands over blocks it has set aside until the host says it is done) and free page
//! reporting (the driver hands over free blocks on its own, and takes them back once the buffer
//! is returned). Both are in [`free_page`].
//!
//! - [`device`]: the [`Balloon`] device.
//! - [`free_page`]: free page hinting and reporting.
//! - [`event_handler`]: the event-loop side (activation, queue eventfds, statistics timer).
//! - [`persist`]: checkpoint state.
//! - [`stats`]: the statistics tags and what they are called in Firecracker's API.

pub mod device;
pub mod event_handler;
pub mod free_page;
pub mod persist;
pub mod stats;

pub use device::{Balloon, BalloonConfig, BalloonCounts, BalloonError};
pub use free_page::{HintingState, HintingStatus};
pub use persist::{BalloonFullState, BalloonState, FreePageState};
pub use stats::BalloonStats;

/// Size of each queue the device offers.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the inflate queue.
pub const INFLATE_INDEX: usize = 0;
/// Index of the deflate queue.
pub const DEFLATE_INDEX: usize = 1;
/// Index of the statistics queue (present only with statistics on).
pub const STATS_INDEX: usize = 2;
/// Feature bit: the statistics queue is present.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// Feature bit: the guest may deflate the balloon when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Feature bit: the free page hinting queue is present (after the statistics queue, if any).
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
/// Feature bit: the free page reporting queue is present (the last queue).
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;
/// Free page hinting command id: the driver has stopped hinting (driver to device), or no run
/// was ever started (device to driver).
pub const FREE_PAGE_HINT_STOP: u32 = 0;
/// Free page hinting command id: the host is done with the hints; the driver may use the
/// hinted pages again.
pub const FREE_PAGE_HINT_DONE: u32 = 1;
/// Page frame numbers are in 4 KiB units, whatever the guest's page size.
pub const PFN_SHIFT: u32 = 12;
/// 4 KiB pages per MiB.
pub const PAGES_PER_MIB: u32 = 256;
