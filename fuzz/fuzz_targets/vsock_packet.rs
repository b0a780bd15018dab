//! Fuzz the virtio-vsock packet parser: flat packets, and the same bytes laid out as a tx chain
//! (split over up to four descriptors, some device-writable, some outside guest memory), plus
//! writing a parsed packet back into an rx chain. Nothing here may panic.
#![no_main]

use std::sync::OnceLock;

use cairn_devices::virtio::vsock::packet::{self, HDR_LEN, MAX_PKT_DATA};
use cairn_devices::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: u64 = 0x10_0000;
const PIECE_BASE: u64 = 0x1_0000;
const PIECE_STRIDE: u64 = 0x2_0000;
const F_WRITE: u16 = 2;

fn mem() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
    })
}

fuzz_target!(|data: &[u8]| {
    // Flat form: a header that parses re-encodes to the same bytes.
    if let Ok((hdr, payload)) = packet::parse(data) {
        assert_eq!(&hdr.to_bytes()[..], &data[..HDR_LEN]);
        assert_eq!(payload.len(), hdr.len as usize);
        assert!(hdr.len <= MAX_PKT_DATA);
    }

    // Chain form. The first byte says how to lay the rest out.
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let rest = &rest[..rest.len().min(PIECE_STRIDE as usize)];
    let mem = mem();
    let n = usize::from(ctl & 3) + 1;
    let piece_len = rest.len().div_ceil(n).max(1);
    let mut descs = Vec::new();
    for (i, piece) in rest
        .chunks(piece_len)
        .chain(std::iter::once(&[][..]))
        .take(n)
        .enumerate()
    {
        let mut addr = PIECE_BASE + i as u64 * PIECE_STRIDE;
        mem.write_slice(piece, GuestAddress(addr))
            .expect("in memory");
        let writable = ctl & (4 << i) != 0;
        if ctl & 0x40 != 0 && i + 1 == n {
            addr = MEM_SIZE - 8; // runs off the end of guest memory
        }
        let flags = if writable { F_WRITE } else { 0 };
        descs.push(RawDescriptor::from(Descriptor::new(
            addr,
            piece.len() as u32,
            flags,
            0,
        )));
    }
    let queue = MockSplitQueue::new(mem, 16);
    let Ok(chain) = queue.build_desc_chain(&descs) else {
        return;
    };
    let mut buf = vec![0u8; MAX_PKT_DATA as usize];
    let parsed = packet::read_tx_packet(mem, chain, &mut buf);
    if let Ok(hdr) = &parsed {
        assert!(hdr.len <= MAX_PKT_DATA);
    }

    // The same descriptors, all device-writable, as an rx chain: write the packet back.
    let rx_descs: Vec<RawDescriptor> = descs
        .iter()
        .map(|d| {
            let d = Descriptor::from(*d);
            RawDescriptor::from(Descriptor::new(d.addr().0, d.len(), F_WRITE, 0))
        })
        .collect();
    let Ok(chain) = queue.build_desc_chain(&rx_descs) else {
        return;
    };
    let hdr = parsed.unwrap_or_default();
    if let Ok(cap) = packet::rx_data_capacity(mem, chain.clone()) {
        assert!(cap <= MAX_PKT_DATA as usize);
        let n = (hdr.len as usize).min(cap);
        let written = packet::write_rx_packet(mem, chain, &hdr, &buf[..n]);
        if let Ok(written) = written {
            assert_eq!(written as usize, HDR_LEN + n);
        }
    }
});
