//! A client that writes far more than it reads: the server stops reading
//! once a connection's out queue passes `out_high_water`, resumes when it has
//! drained, and loses, reorders or duplicates nothing on the way.

mod support;

use std::io::Write;
use std::time::Duration;

use support::*;

#[test]
fn slow_reader_gets_every_echo_in_order_through_read_pauses() {
    const MESSAGES: usize = 2000;
    const SIZE: usize = 16 * 1024; // ~32 MiB in total: more than the high-water
                                   // mark plus what the kernel buffers can hold
    let server = start(|c| c.out_high_water = 1 << 20);
    let mut c = Raw::upgrade(server.local_addr(), "/echo");
    let payload = |i: usize| -> Vec<u8> {
        let mut p = vec![(i % 251) as u8; SIZE];
        p[..8].copy_from_slice(&(i as u64).to_be_bytes());
        p
    };

    let mut writer = c.sock.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let sender = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            let op = if i.is_multiple_of(2) {
                OP_BINARY
            } else {
                OP_TEXT
            };
            let p = if op == OP_TEXT {
                let mut p = payload(i);
                // Keep it valid UTF-8: ASCII only.
                p.iter_mut().for_each(|b| *b = b'a' + *b % 26);
                p
            } else {
                payload(i)
            };
            writer.write_all(&frame(true, 0, op, &p)).expect("write");
        }
    });

    // Read nothing for a while: the kernel buffers fill, the server's out
    // queue passes the high-water mark and it stops reading.
    std::thread::sleep(Duration::from_millis(1500));
    let mid = stats(server.shared());
    assert!(
        mid.messages_in < MESSAGES as u64,
        "the server read everything without anyone reading its echoes: {mid:?}"
    );

    for i in 0..MESSAGES {
        let f = c.read_frame(TIMEOUT);
        let op = if i.is_multiple_of(2) {
            OP_BINARY
        } else {
            OP_TEXT
        };
        assert_eq!(
            (f.fin, f.opcode, f.payload.len()),
            (true, op, SIZE),
            "message {i}"
        );
        let mut want = payload(i);
        if op == OP_TEXT {
            want.iter_mut().for_each(|b| *b = b'a' + *b % 26);
        }
        assert!(f.payload == want, "message {i}: payload differs");
    }
    sender.join().expect("sender");
    let s = stats(server.shared());
    assert_eq!(
        (s.messages_in, s.messages_out),
        (MESSAGES as u64, MESSAGES as u64)
    );
    c.send_close(1000, b"");
    c.assert_closed_with(1000);
    stop(server);
}
