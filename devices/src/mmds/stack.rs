//! The MMDS network stack of one interface: the virtio-net device gives it every guest frame
//! addressed to the MMDS address (ARP for it, IPv4 to it) instead of the tap, and asks it for
//! frames to deliver to the guest before reading the tap.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::data_store::Mmds;
use super::pdu::{self, ArpRequest, Ethernet, Ipv4, Tcp, ETHERTYPE_ARP, ETHERTYPE_IPV4};
use super::tcp::TcpServer;

/// The MAC address MMDS answers from (Firecracker's).
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// The default MMDS address.
pub const DEFAULT_MMDS_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The TCP port MMDS serves.
pub const MMDS_TCP_PORT: u16 = 80;

/// Counters, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmdsStats {
    /// Guest frames taken by MMDS.
    pub rx_frames: u64,
    /// Of those, frames MMDS could not use (not ARP or TCP, malformed, bad checksum).
    pub rx_dropped: u64,
    /// Of the dropped frames, those that are not even Ethernet frames.
    pub rx_bad_eth: u64,
    /// Frames MMDS sent to the guest.
    pub tx_frames: u64,
    /// Bytes in them.
    pub tx_bytes: u64,
    /// TCP connections opened.
    pub connections_created: u64,
    /// TCP connections closed or reset.
    pub connections_destroyed: u64,
}

/// One interface's MMDS stack.
#[derive(Debug)]
pub struct MmdsStack {
    ipv4: Ipv4Addr,
    mmds: Arc<Mutex<Mmds>>,
    /// The guest's MAC, from its last frame to MMDS.
    remote_mac: [u8; 6],
    /// An ARP request to answer: the asker's MAC and address.
    pending_arp: Option<([u8; 6], Ipv4Addr)>,
    tcp: TcpServer,
    stats: MmdsStats,
}

impl MmdsStack {
    /// A stack answering at `ipv4` from the shared data store.
    pub fn new(ipv4: Ipv4Addr, mmds: Arc<Mutex<Mmds>>) -> Self {
        Self {
            ipv4,
            mmds,
            remote_mac: [0; 6],
            pending_arp: None,
            tcp: TcpServer::new(MMDS_TCP_PORT),
            stats: MmdsStats::default(),
        }
    }

    /// The MMDS address.
    pub fn ipv4_addr(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// The data store.
    pub fn mmds(&self) -> &Arc<Mutex<Mmds>> {
        &self.mmds
    }

    /// Counters.
    pub fn stats(&self) -> MmdsStats {
        let (created, destroyed) = self.tcp.connections_created_destroyed();
        MmdsStats {
            connections_created: created,
            connections_destroyed: destroyed,
            ..self.stats
        }
    }

    /// Whether `frame` (an Ethernet frame, no vnet header) is for MMDS: ARP asking about the
    /// MMDS address, or IPv4 to it.
    pub fn is_mmds_frame(&self, frame: &[u8]) -> bool {
        let Some(eth) = Ethernet::parse(frame) else {
            return false;
        };
        match eth.ethertype {
            ETHERTYPE_ARP => eth.payload.get(24..28) == Some(&self.ipv4.octets()[..]),
            ETHERTYPE_IPV4 => pdu::ipv4_dst(eth.payload) == Some(self.ipv4),
            _ => false,
        }
    }

    /// Take a frame [`Self::is_mmds_frame`] said is for MMDS. Frames MMDS cannot use are
    /// dropped (counted in `rx_dropped`), never sent on.
    pub fn detour_frame(&mut self, frame: &[u8], now: Instant) {
        self.stats.rx_frames += 1;
        if !self.take(frame, now) {
            self.stats.rx_dropped += 1;
        }
    }

    fn take(&mut self, frame: &[u8], now: Instant) -> bool {
        let Some(eth) = Ethernet::parse(frame) else {
            self.stats.rx_bad_eth += 1;
            return false;
        };
        match eth.ethertype {
            ETHERTYPE_ARP => match ArpRequest::parse(eth.payload) {
                Some(req) if req.tpa == self.ipv4 => {
                    self.remote_mac = req.sha;
                    self.pending_arp = Some((req.sha, req.spa));
                    true
                }
                _ => false,
            },
            ETHERTYPE_IPV4 => {
                let Some(ip) = Ipv4::parse(eth.payload) else {
                    return false;
                };
                if ip.dst != self.ipv4 || ip.fragment || ip.protocol != pdu::PROTO_TCP {
                    return false;
                }
                let Some(seg) = Tcp::parse(ip.payload, ip.src, ip.dst) else {
                    return false;
                };
                self.remote_mac = eth.src;
                self.tcp.receive(ip.src, &seg, &self.mmds, now);
                true
            }
            _ => false,
        }
    }

    /// Whether [`Self::write_next_frame`] may have a frame.
    pub fn has_pending(&self) -> bool {
        self.pending_arp.is_some() || self.tcp.has_work()
    }

    /// Write the next frame for the guest (Ethernet, no vnet header) into `buf`; returns its
    /// length, or `None` when there is nothing to send.
    pub fn write_next_frame(&mut self, buf: &mut [u8], now: Instant) -> Option<usize> {
        if let Some((mac, ip)) = self.pending_arp.take() {
            let payload = pdu::write_ethernet(buf, mac, MMDS_MAC, ETHERTYPE_ARP)?;
            let n = pdu::write_arp_reply(payload, MMDS_MAC, self.ipv4, mac, ip)?;
            self.stats.tx_frames += 1;
            self.stats.tx_bytes += (pdu::ETH_HDR_LEN + n) as u64;
            return Some(pdu::ETH_HDR_LEN + n);
        }
        let (remote_mac, local) = (self.remote_mac, self.ipv4);
        let n = self.tcp.write_next(now, |remote, h, payload| {
            pdu::write_tcp_frame(buf, remote_mac, MMDS_MAC, local, remote, h, payload)
        })?;
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += n as u64;
        Some(n)
    }

    /// Open TCP connections.
    pub fn connection_count(&self) -> usize {
        self.tcp.connection_count()
    }
}

#[cfg(test)]
#[path = "stack_tests.rs"]
mod tests;
