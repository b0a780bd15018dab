//! Firecracker's rate limiter configuration (the API's [`RateLimiterConfig`]) as the devices
//! take it ([`LimiterConfig`]).

use cairn_devices::rate_limiter::{BucketConfig, LimiterConfig, RateLimiter, RateLimiterState};
use cairn_devices::virtio::block::{Block, BlockError};
use cairn_devices::virtio::net::{Net, NetError};
use cairn_snapshot::Persist;

use crate::checkpoint::state::VirtioDeviceState;
use crate::config::{RateLimiterConfig, TokenBucketConfig};

/// A block device's checkpoint state: `Block` without a rate limiter (the layout every cairn
/// reads), `BlockLimited` with one.
pub fn save_block(dev: &Block) -> Result<VirtioDeviceState, BlockError> {
    let state = dev.save()?;
    if !dev.rate_limiter().is_limiting() {
        return Ok(VirtioDeviceState::Block(state));
    }
    let limiter = dev.rate_limiter().save().map_err(BlockError::EventFd)?;
    Ok(VirtioDeviceState::BlockLimited(state, limiter))
}

/// A network device's checkpoint state: `Net` without rate limiters, `NetLimited` with.
pub fn save_net(dev: &Net) -> Result<VirtioDeviceState, NetError> {
    let state = dev.save()?;
    let (rx, tx) = dev.rate_limiters();
    if !rx.is_limiting() && !tx.is_limiting() {
        return Ok(VirtioDeviceState::Net(state));
    }
    let (rx, tx) = (
        rx.save().map_err(NetError::EventFd)?,
        tx.save().map_err(NetError::EventFd)?,
    );
    Ok(VirtioDeviceState::NetLimited(state, rx, tx))
}

/// Put saved rate limiters back on a restored network device.
pub fn restore_net_limiters(
    dev: &mut Net,
    rx: &RateLimiterState,
    tx: &RateLimiterState,
) -> std::io::Result<()> {
    dev.set_rate_limiters(RateLimiter::restore((), rx)?, RateLimiter::restore((), tx)?)
}

/// Put a saved rate limiter back on a restored block device.
pub fn restore_block_limiter(dev: &mut Block, state: &RateLimiterState) -> std::io::Result<()> {
    dev.set_rate_limiter(RateLimiter::restore((), state)?)
}

fn bucket(b: &TokenBucketConfig) -> BucketConfig {
    BucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time_ms: b.refill_time,
    }
}

/// The devices' limiter for an API rate limiter; `None` limits nothing.
pub fn limiter_config(rl: Option<&RateLimiterConfig>) -> LimiterConfig {
    LimiterConfig {
        bandwidth: rl.and_then(|r| r.bandwidth.as_ref()).map(bucket),
        ops: rl.and_then(|r| r.ops.as_ref()).map(bucket),
    }
}

/// The API's form of a device limiter (for `GET /vm/config` after a snapshot load).
pub fn api_config(l: &LimiterConfig) -> Option<RateLimiterConfig> {
    let back = |b: &BucketConfig| TokenBucketConfig {
        size: b.size,
        one_time_burst: (b.one_time_burst > 0).then_some(b.one_time_burst),
        refill_time: b.refill_time_ms,
    };
    if l.bandwidth.is_none() && l.ops.is_none() {
        return None;
    }
    Some(RateLimiterConfig {
        bandwidth: l.bandwidth.as_ref().map(back),
        ops: l.ops.as_ref().map(back),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_device_form() {
        let rl = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1000,
                one_time_burst: Some(10),
                refill_time: 100,
            }),
            ops: None,
        };
        let dev = limiter_config(Some(&rl));
        assert_eq!(dev.bandwidth.unwrap().one_time_burst, 10);
        assert_eq!(api_config(&dev), Some(rl));
        assert_eq!(limiter_config(None), LimiterConfig::default());
        assert_eq!(api_config(&LimiterConfig::default()), None);
    }

    fn block(limit: Option<&RateLimiterConfig>) -> Block {
        let cfg = cairn_devices::virtio::block::BlockConfig {
            drive_id: "d".into(),
            path: "/dev/null".into(),
            read_only: false,
        };
        let disk = cairn_devices::virtio::block::MemDisk::new(4096);
        let mut dev = Block::new(cfg, Box::new(disk)).unwrap();
        if let Some(l) = limit {
            dev.update_rate_limiter(&limiter_config(Some(l))).unwrap();
        }
        dev
    }

    fn round_trip(s: &VirtioDeviceState) -> VirtioDeviceState {
        let bytes = postcard::to_stdvec(s).unwrap();
        cairn_snapshot::file::decode_payload(&bytes).unwrap()
    }

    #[test]
    fn block_limiter_survives_a_checkpoint_and_unlimited_keeps_the_old_layout() {
        // Unlimited: the `Block` variant, byte for byte what cairn wrote before limiters.
        let plain = save_block(&block(None)).unwrap();
        let VirtioDeviceState::Block(state) = &plain else {
            panic!("unlimited block saved as {plain:?}");
        };
        let old_layout = postcard::to_stdvec(&(0u32, state)).unwrap();
        assert_eq!(postcard::to_stdvec(&plain).unwrap(), old_layout);
        assert!(matches!(round_trip(&plain), VirtioDeviceState::Block(_)));

        let rl = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1 << 20,
                one_time_burst: None,
                refill_time: 1000,
            }),
            ops: Some(TokenBucketConfig {
                size: 100,
                one_time_burst: Some(50),
                refill_time: 1000,
            }),
        };
        let limited = save_block(&block(Some(&rl))).unwrap();
        let VirtioDeviceState::BlockLimited(state, l) = round_trip(&limited) else {
            panic!("limited block saved as {limited:?}");
        };
        let mut dev = block(None);
        restore_block_limiter(&mut dev, &l).unwrap();
        assert_eq!(api_config(&dev.rate_limiter().config()), Some(rl));
        assert_eq!(state.config.drive_id, "d");
    }
}
