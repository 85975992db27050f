//! Bystanders for the in-process gateway tests of hostile patterns
//! (tests/channel_bounds.rs, tests/replay_pacing.rs): while an attack runs,
//! an `/echo` client exchanges numbered messages (each answered, in order,
//! before the next) and a `/ws` subscriber must receive every publication
//! a publisher makes through `POST /api/publish` meanwhile, offsets
//! contiguous. [`Bystanders::served`] waits until both progressed (the
//! attack is running: they are served during it), [`Bystanders::finish`]
//! checks that nothing was lost and returns the worst echo round trip.
//!
//! Declare it with `#[path = "support/bystanders.rs"] mod bystander;` beside
//! `gateway_support`.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

use crate::gateway_support::{api_publish, Client, NoMessage, WAIT};

/// The bystanders' channel.
pub const FEED: &str = "bystander-feed";

pub struct Bystanders {
    stop: Arc<AtomicBool>,
    echoes: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    echo: Option<JoinHandle<Duration>>,
    publisher: Option<JoinHandle<Vec<u64>>>,
    subscriber: Option<JoinHandle<Vec<u64>>>,
}

/// What the bystanders saw.
#[derive(Debug)]
pub struct Report {
    pub echoes: u64,
    /// The slowest echo round trip.
    pub worst_echo: Duration,
    pub publications: usize,
}

impl Drop for Bystanders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn join<T>(name: &str, h: Option<JoinHandle<T>>) -> T {
    match h.expect("joined once").join() {
        Ok(v) => v,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("bystander {name} failed: {msg}")
        }
    }
}

impl Bystanders {
    /// Start them; returns once the subscriber is subscribed.
    pub fn start(addr: SocketAddr) -> Bystanders {
        let stop = Arc::new(AtomicBool::new(false));
        let echoes = Arc::new(AtomicU64::new(0));
        let delivered = Arc::new(AtomicU64::new(0));
        let last = Arc::new(AtomicU64::new(u64::MAX));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let subscriber = {
            let (stop, last, delivered) = (stop.clone(), last.clone(), delivered.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, "/ws");
                c.subscribe(FEED);
                let _ = ready_tx.send(());
                let mut got = Vec::new();
                let mut stopped_at: Option<Instant> = None;
                loop {
                    let target = last.load(Ordering::Acquire);
                    if target != u64::MAX && got.last().is_some_and(|&o| o >= target) {
                        break;
                    }
                    match c.try_next(Duration::from_millis(100)) {
                        Ok(m) if m["channel"] == FEED && m.get("data").is_some() => {
                            got.push(m["offset"].as_u64().expect("an offset"));
                            delivered.fetch_add(1, Ordering::AcqRel);
                        }
                        Ok(_) | Err(NoMessage::Timeout) => {}
                        Err(NoMessage::Closed(code)) => {
                            panic!("the subscriber was closed ({code:?})")
                        }
                    }
                    if stop.load(Ordering::Acquire) {
                        let t = *stopped_at.get_or_insert_with(Instant::now);
                        assert!(
                            t.elapsed() < WAIT,
                            "publications up to {target} not all received (last {:?})",
                            got.last()
                        );
                    }
                }
                c.close();
                got
            })
        };
        ready_rx.recv_timeout(WAIT).expect("bystander subscribed");
        let publisher = {
            let (stop, last) = (stop.clone(), last.clone());
            std::thread::spawn(move || {
                let mut offsets = Vec::new();
                while offsets.is_empty() || !stop.load(Ordering::Acquire) {
                    let n = offsets.len();
                    let r = api_publish(addr, FEED, json!({ "n": n }));
                    offsets.push(r["offset"].as_u64().expect("published"));
                    std::thread::sleep(Duration::from_millis(20));
                }
                last.store(*offsets.last().expect("one"), Ordering::Release);
                offsets
            })
        };
        let echo = {
            let (stop, echoes) = (stop.clone(), echoes.clone());
            std::thread::spawn(move || {
                let req = format!("ws://{addr}/echo").into_client_request().unwrap();
                let sock = TcpStream::connect(addr).expect("echo connect");
                sock.set_read_timeout(Some(WAIT)).unwrap();
                sock.set_nodelay(true).unwrap();
                let (mut ws, _) = tungstenite::client::client(req, sock).expect("echo upgrade");
                let mut worst = Duration::ZERO;
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let msg = format!("echo #{n}");
                    let t0 = Instant::now();
                    ws.send(Message::Text(msg.clone())).expect("echo send");
                    loop {
                        match ws.read() {
                            Ok(Message::Text(t)) => {
                                assert_eq!(t, msg, "echo lost or out of order");
                                break;
                            }
                            Ok(_) => {}
                            Err(e) => panic!("no echo for #{n} within {WAIT:?}: {e}"),
                        }
                    }
                    worst = worst.max(t0.elapsed());
                    n += 1;
                    echoes.fetch_add(1, Ordering::AcqRel);
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = ws.close(None);
                worst
            })
        };
        Bystanders {
            stop,
            echoes,
            delivered,
            echo: Some(echo),
            publisher: Some(publisher),
            subscriber: Some(subscriber),
        }
    }

    /// (echoes, deliveries) so far.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.echoes.load(Ordering::Acquire),
            self.delivered.load(Ordering::Acquire),
        )
    }

    /// Wait until the bystanders got `n` more echoes and `n` more
    /// publications than at `mark` (panics after [`WAIT`] × 2, or if one of
    /// them failed).
    pub fn served(&self, mark: (u64, u64), n: u64) {
        let deadline = Instant::now() + WAIT * 2;
        loop {
            for h in [
                self.echo.as_ref().map(|h| h.is_finished()),
                self.publisher.as_ref().map(|h| h.is_finished()),
                self.subscriber.as_ref().map(|h| h.is_finished()),
            ] {
                assert_ne!(h, Some(true), "a bystander failed (its panic is above)");
            }
            let (e, d) = self.progress();
            if e >= mark.0 + n && d >= mark.1 + n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bystanders not served: {:?} since {mark:?}",
                self.progress()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop them; every publication arrived, in order.
    pub fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::Release);
        let worst_echo = join("echo", self.echo.take());
        let published = join("publisher", self.publisher.take());
        let received = join("subscriber", self.subscriber.take());
        assert_eq!(
            received, published,
            "the bystander subscriber lost or reordered publications"
        );
        Report {
            echoes: self.echoes.load(Ordering::Acquire),
            worst_echo,
            publications: published.len(),
        }
    }
}
