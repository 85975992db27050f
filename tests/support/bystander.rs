//! A bystander for the gateway tests: a `/ws` client subscribed to a
//! channel of its own before a case's bad input, checked after it. It must
//! still get every publication made through the API meanwhile, in order
//! (offsets contiguous), and answer a ping op.
//!
//! Declare it after the gateway helpers, at the crate root of the test:
//!
//! ```ignore
//! #[path = "support/gateway.rs"]
//! mod gateway_support;
//! #[path = "support/bystander.rs"]
//! mod bystander;
//! ```

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;

use serde_json::json;

use crate::gateway_support::{api_publish, Client};

pub struct Bystander {
    addr: SocketAddr,
    client: Client,
    channel: String,
    /// The offset of the last publication it got.
    offset: u64,
}

impl Bystander {
    /// Connect and subscribe to `channel`.
    pub fn connect(addr: SocketAddr, channel: &str) -> Bystander {
        let mut client = Client::connect(addr, "/ws");
        let r = client.subscribe(channel);
        let offset = r["offset"].as_u64().unwrap_or(0);
        let mut b = Bystander {
            addr,
            client,
            channel: channel.to_string(),
            offset,
        };
        b.assert_served("at connect");
        b
    }

    /// Publish through the API; the bystander gets it next, at the next
    /// offset, and answers a ping.
    pub fn assert_served(&mut self, after: &str) {
        let data = json!({ "after": after });
        let r = api_publish(self.addr, &self.channel, data.clone());
        let (offset, got) = self.client.next_publication(&self.channel);
        assert_eq!(
            (offset, &got),
            (self.offset + 1, &data),
            "the bystander after {after}: {r}"
        );
        self.offset = offset;
        self.client.assert_alive();
    }

    pub fn close(self) {
        self.client.close();
    }
}
