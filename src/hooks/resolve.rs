//! The backend's address for the HTTP client, without a thread per call.
//!
//! ureq resolves the URL's host before every call, pooled connection or
//! not, and its `DefaultResolver` runs the lookup on a new thread whenever
//! the call has a timeout (every call here: `proxy.timeout`,
//! `webhooks.timeout`). Measured with `scripts/bench_hooks.py`: one
//! `clone3` per proxied call (`strace -c -f`), about 250 µs of gateway CPU
//! per call of a ~300 µs total. [`Resolver`] answers instead:
//!
//! - an IP literal (`http://10.0.0.5:3000/…`, `http://[::1]:3000/…`): at
//!   once, no lookup;
//! - a name: the default resolver's answer (its thread, bounded by the
//!   call's timeout), kept [`KEEP`] so that the next calls take it from
//!   memory and a DNS change is followed within that time. A failed lookup
//!   is not kept.
//!
//! ureq's resolver interface is in its `unversioned` module (not covered
//! by semver): `Cargo.lock` pins the version this was written against.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver as Resolve};
use ureq::unversioned::transport::NextTimeout;

/// How long a name's addresses are used before it is looked up again.
pub const KEEP: Duration = Duration::from_secs(10);
/// Names kept per agent (an agent calls a few hook URLs).
const NAMES: usize = 8;

/// IP literals at once, names looked up at most every [`KEEP`].
#[derive(Debug, Default)]
pub struct Resolver {
    lookup: DefaultResolver,
    /// (host:port, when looked up, addresses), most recent last.
    names: Mutex<Vec<(String, Instant, ResolvedSocketAddrs)>>,
}

impl Resolve for Resolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(host), Some(port)) = (uri.host(), port(uri)) else {
            return self.lookup.resolve(uri, config, timeout);
        };
        if let Some(ip) = literal(host) {
            let mut one = self.empty();
            one.push(SocketAddr::new(ip, port));
            return Ok(one);
        }
        self.kept(format!("{host}:{port}"), Instant::now(), || {
            self.lookup.resolve(uri, config, timeout)
        })
    }
}

impl Resolver {
    /// `key`'s addresses looked up less than [`KEEP`] before `now`, or
    /// `lookup`'s (kept when it succeeds).
    fn kept(
        &self,
        key: String,
        now: Instant,
        lookup: impl FnOnce() -> Result<ResolvedSocketAddrs, ureq::Error>,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        {
            let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, _, addrs)) = names
                .iter()
                .find(|(k, at, _)| *k == key && now.duration_since(*at) < KEEP)
            {
                return Ok(addrs.clone());
            }
        }
        let addrs = lookup()?;
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.retain(|(k, _, _)| *k != key);
        if names.len() >= NAMES {
            names.remove(0);
        }
        names.push((key, now, addrs.clone()));
        Ok(addrs)
    }
}

/// The host as an IP address, when it is one (`[::1]` too).
fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The URL's port, or its scheme's.
fn port(uri: &Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str()? {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn ip_literals_need_no_lookup() {
        let at = |url: &str| {
            let uri: Uri = url.parse().unwrap();
            let host = uri.host().unwrap().to_string();
            (literal(&host), port(&uri))
        };
        assert_eq!(
            at("http://127.0.0.1:3000/x"),
            (Some([127, 0, 0, 1].into()), Some(3000))
        );
        assert_eq!(
            at("https://[::1]/x"),
            (Some("::1".parse().unwrap()), Some(443))
        );
        assert_eq!(
            at("http://10.1.2.3/"),
            (Some([10, 1, 2, 3].into()), Some(80))
        );
        assert_eq!(at("http://app.internal:8080/"), (None, Some(8080)));
    }

    #[test]
    fn names_are_looked_up_once_per_keep_and_failures_are_not_kept() {
        let r = Resolver::default();
        let lookups = Cell::new(0);
        let found = || {
            lookups.set(lookups.get() + 1);
            let mut a = r.empty();
            a.push("10.0.0.7:80".parse().unwrap());
            Ok(a)
        };
        let t0 = Instant::now();
        let first = r.kept("app:80".into(), t0, found).unwrap();
        let again = r.kept("app:80".into(), t0 + KEEP / 2, found).unwrap();
        assert_eq!((lookups.get(), first.len(), again[0]), (1, 1, first[0]));
        r.kept("app:80".into(), t0 + KEEP, found).unwrap();
        assert_eq!(lookups.get(), 2, "looked up again after KEEP");
        let failed = || {
            lookups.set(lookups.get() + 1);
            Err(ureq::Error::HostNotFound)
        };
        assert!(r.kept("gone:80".into(), t0, failed).is_err());
        assert!(r.kept("gone:80".into(), t0, failed).is_err());
        assert_eq!(lookups.get(), 4, "a failure is not kept");
        for i in 0..20 {
            r.kept(format!("n{i}:80"), t0, found).unwrap();
        }
        assert_eq!(r.names.lock().unwrap().len(), NAMES, "bounded");
    }
}
