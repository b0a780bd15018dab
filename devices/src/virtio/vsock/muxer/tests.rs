//! Muxer tests: real Unix sockets in a tempdir, the guest played through mock queues.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use super::super::device::tests::{mem, Driver};
use super::super::packet::HDR_LEN;

use super::*;

#[test]
fn connect_line_parsing() {
    assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
    assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
    assert_eq!(parse_connect(b"CONNECT"), None);
    assert_eq!(parse_connect(b"CONNECT x"), None);
    assert_eq!(parse_connect(b"CONNECT 1 2"), None);
    assert_eq!(parse_connect(b"connect 1"), None);
    assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
    assert_eq!(parse_connect(&[0xff, 0xfe]), None);
}

fn client(path: &Path) -> UnixStream {
    let c = UnixStream::connect(path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn ops(pkts: &[(VsockHeader, Vec<u8>)]) -> Vec<Option<Op>> {
    pkts.iter().map(|(h, _)| h.op()).collect()
}

/// Host CONNECT, guest RESPONSE, data both ways, host close, guest RST.
#[test]
fn host_initiated_connection() {
    let mem = mem();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(&mem, dir.path());
    d.add_rx_buffers(16, 4096);
    let mut c = client(&d.uds);
    c.write_all(b"CONNECT 1234\n").unwrap();

    let got = d.pump_until(|p| !p.is_empty());
    assert_eq!(ops(&got), vec![Some(Op::Request)]);
    let req = got[0].0;
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, 3));
    assert_eq!(req.dst_port, 1234);
    assert!(req.src_port >= FIRST_LOCAL_PORT);
    assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
    let local = req.src_port;

    d.send(d.hdr(1234, local, Op::Response), &[]);
    let mut line = String::new();
    BufReader::new(c.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, format!("OK {local}\n"));

    c.write_all(b"ping").unwrap();
    let got = d.pump_until(|p| p.iter().map(|(_, b)| b.len()).sum::<usize>() >= 4);
    assert!(got
        .iter()
        .all(|(h, _)| h.op() == Some(Op::Rw) && h.src_port == local && h.dst_port == 1234));
    let data: Vec<u8> = got.iter().flat_map(|(_, b)| b.clone()).collect();
    assert_eq!(data, b"ping");

    d.send(d.hdr(1234, local, Op::Rw), b"pong");
    assert_eq!(read_exactly(&mut c, 4), b"pong");

    // The host client goes away: the guest is told both directions are shut.
    drop(c);
    let got = d.pump_until(|p| !p.is_empty());
    assert_eq!(ops(&got), vec![Some(Op::Shutdown)]);
    assert_eq!(got[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    d.send(d.hdr(1234, local, Op::Rst), &[]);
    assert_eq!(d.vsock.connection_count(), 0);
}

/// Guest REQUEST to `<uds>_52` with a listener there; data both ways; guest close.
#[test]
fn guest_initiated_connection() {
    let mem = mem();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(&mem, dir.path());
    d.add_rx_buffers(16, 4096);
    let mut path = d.uds.clone().into_os_string();
    path.push("_52");
    let listener = UnixListener::bind(&path).unwrap();

    d.send(d.hdr(1000, 52, Op::Request), &[]);
    let got = d.recv();
    assert_eq!(ops(&got), vec![Some(Op::Response)]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (52, 1000));
    let (mut server, _) = listener.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    d.send(d.hdr(1000, 52, Op::Rw), b"hi host");
    assert_eq!(read_exactly(&mut server, 7), b"hi host");

    server.write_all(b"hi guest").unwrap();
    let got = d.pump_until(|p| p.iter().map(|(_, b)| b.len()).sum::<usize>() >= 8);
    let data: Vec<u8> = got.iter().flat_map(|(_, b)| b.clone()).collect();
    assert_eq!(data, b"hi guest");
    // The device tells the guest how much it forwarded.
    d.send(d.hdr(1000, 52, Op::CreditRequest), &[]);
    let got = d.recv();
    assert_eq!(ops(&got), vec![Some(Op::CreditUpdate)]);
    assert_eq!(got[0].0.fwd_cnt, 7);

    // Guest closes both directions: the host sees EOF and the guest gets RST.
    let mut shut = d.hdr(1000, 52, Op::Shutdown);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    d.send(shut, &[]);
    let got = d.recv();
    assert_eq!(ops(&got), vec![Some(Op::Rst)]);
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(d.vsock.connection_count(), 0);
}

#[test]
fn request_without_listener_gets_rst() {
    let mem = mem();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(&mem, dir.path());
    d.add_rx_buffers(4, 4096);
    d.send(d.hdr(1000, 53, Op::Request), &[]);
    let got = d.recv();
    assert_eq!(ops(&got), vec![Some(Op::Rst)]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (53, 1000));
    assert_eq!(got[0].0.dst_cid, 3);
    // Data for a connection that does not exist is answered the same way.
    d.send(d.hdr(1000, 53, Op::Rw), b"x");
    assert_eq!(ops(&d.recv()), vec![Some(Op::Rst)]);
    // A RST for nothing gets no answer.
    d.send(d.hdr(1000, 53, Op::Rst), &[]);
    assert!(d.recv().is_empty());
}

#[test]
fn host_client_refused_by_guest_is_closed() {
    let mem = mem();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(&mem, dir.path());
    d.add_rx_buffers(4, 4096);
    let mut c = client(&d.uds);
    c.write_all(b"CONNECT 9\n").unwrap();
    let got = d.pump_until(|p| !p.is_empty());
    let local = got[0].0.src_port;
    d.send(d.hdr(9, local, Op::Rst), &[]);
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(d.vsock.connection_count(), 0);

    // A bad CONNECT line closes the client without telling the guest.
    let mut c = client(&d.uds);
    c.write_all(b"HELLO\n").unwrap();
    for _ in 0..50 {
        d.vsock.process_host_events();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(d.recv().is_empty());
}

#[test]
fn packets_wait_for_rx_buffers() {
    let mem = mem();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(&mem, dir.path());
    d.send(d.hdr(1000, 53, Op::Request), &[]);
    assert!(d.recv().is_empty());
    assert!(d.vsock.muxer.has_pending_rx());
    d.add_rx_buffers(1, 4096);
    d.vsock.process_rx();
    assert_eq!(ops(&d.recv()), vec![Some(Op::Rst)]);
}

#[test]
fn host_data_respects_guest_credit() {
    let mem = mem();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(&mem, dir.path());
    d.add_rx_buffers(16, 4096);
    let mut path = d.uds.clone().into_os_string();
    path.push("_60");
    let listener = UnixListener::bind(&path).unwrap();
    let mut req = d.hdr(1000, 60, Op::Request);
    req.buf_alloc = 8;
    d.send(req, &[]);
    assert_eq!(ops(&d.recv()), vec![Some(Op::Response)]);
    let (mut server, _) = listener.accept().unwrap();
    server.write_all(&[9u8; 20]).unwrap();

    let got = d.pump_until(|p| p.iter().any(|(h, _)| h.op() == Some(Op::CreditRequest)));
    let data: usize = got.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(data, 8, "only buf_alloc bytes go out before credit returns");

    let mut upd = d.hdr(1000, 60, Op::CreditUpdate);
    upd.buf_alloc = 8;
    upd.fwd_cnt = 8;
    d.send(upd, &[]);
    let got = d.pump_until(|p| p.iter().map(|(_, b)| b.len()).sum::<usize>() >= 8);
    assert_eq!(got.iter().map(|(_, b)| b.len()).sum::<usize>(), 8);

    // A guest that ignores the host's credit is reset.
    let big = vec![1u8; 64 * 1024];
    let mut sent = 0;
    let mut reset = false;
    for _ in 0..((CONN_BUF_SIZE as usize / big.len()) + 64) {
        let mut h = d.hdr(1000, 60, Op::Rw);
        h.buf_alloc = 8;
        h.fwd_cnt = 8;
        d.send(h, &big);
        sent += big.len();
        if ops(&d.recv()).contains(&Some(Op::Rst)) {
            reset = true;
            break;
        }
    }
    assert!(reset, "no RST after {sent} bytes that the host never read");
    assert_eq!(d.vsock.connection_count(), 0);
}

#[test]
fn malformed_tx_packets_are_dropped() {
    let mem = mem();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(&mem, dir.path());
    d.add_rx_buffers(1, 4096);
    let good = d.hdr(1000, 53, Op::Request);
    // Header split over two descriptors.
    let b = good.to_bytes();
    d.send_raw(&[b[..20].to_vec(), b[20..].to_vec()]);
    // Unknown op, wrong type, oversized and truncated data, wrong source CID.
    let mut h = good;
    h.op = 99;
    d.send_raw(&[h.to_bytes().to_vec()]);
    let mut h = good;
    h.type_ = 2;
    d.send_raw(&[h.to_bytes().to_vec()]);
    let mut h = d.hdr(1000, 53, Op::Rw);
    h.len = u32::MAX;
    d.send_raw(&[h.to_bytes().to_vec()]);
    h.len = 100;
    d.send_raw(&[h.to_bytes().to_vec(), vec![0u8; 10]]);
    let mut h = good;
    h.src_cid = 7;
    d.send_raw(&[h.to_bytes().to_vec()]);
    d.send_raw(&[vec![]]);
    assert_eq!(d.used(super::super::TX_INDEX).len(), 7);
    assert!(d.recv().is_empty());
    // The device still serves.
    d.send(good, &[]);
    assert_eq!(ops(&d.recv()), vec![Some(Op::Rst)]);

    // Unusable rx buffers are returned empty and skipped.
    d.add_chain(super::super::RX_INDEX, &[(0x80_0000, 10, 2)]);
    d.add_chain(super::super::RX_INDEX, &[(0x81_0000, 100, 0)]);
    d.add_rx_buffers(1, 0);
    d.send(good, &[]);
    let used = d.used(super::super::RX_INDEX);
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(lens, [0, 0, HDR_LEN as u32]);
}

/// Regression: a CREDIT_REQUEST before the RESPONSE of a host-initiated connection used to
/// leave the connection queued for rx with nothing to send, and `recv_pkt` spun forever.
#[test]
fn credit_request_before_response_does_not_spin() {
    let mem = mem();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(&mem, dir.path());
    d.add_rx_buffers(4, 4096);
    let mut c = client(&d.uds);
    c.write_all(b"CONNECT 5\n").unwrap();
    let got = d.pump_until(|p| !p.is_empty());
    let local = got[0].0.src_port;
    d.send(d.hdr(5, local, Op::CreditRequest), &[]);
    assert!(d.recv().is_empty());
    d.send(d.hdr(5, local, Op::Response), &[]);
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK {local}\n"));
}

/// Regression: rx buffers with room for a header only, while data waits, are returned
/// unused instead of blocking the queue (or spinning).
#[test]
fn header_only_rx_buffers_do_not_block_data() {
    let mem = mem();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(&mem, dir.path());
    let mut path = d.uds.clone().into_os_string();
    path.push("_61");
    let listener = UnixListener::bind(&path).unwrap();
    d.add_rx_buffers(1, 0);
    d.send(d.hdr(1000, 61, Op::Request), &[]);
    assert_eq!(ops(&d.recv()), vec![Some(Op::Response)]);
    let (mut server, _) = listener.accept().unwrap();
    server.write_all(b"data").unwrap();
    d.add_rx_buffers(3, 0);
    d.add_rx_buffers(1, 4096);
    let got = d.pump_until(|p| p.iter().any(|(h, _)| h.op() == Some(Op::Rw)));
    let rw: Vec<_> = got.iter().filter(|(h, _)| h.op() == Some(Op::Rw)).collect();
    assert_eq!(rw[0].1, b"data");
}
