//! Which route a request takes: a pure function of its method and path
//! (and of the routes the configuration turns on), tested as a table.

use super::{api, static_files};

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A WebSocket upgrade to `/echo` (when it is on) or `/ws`, whatever the
    /// method (the upgrade check refuses what is not a `GET`).
    Upgrade(Upgrade),
    /// `GET /sse`: an EventSource stream.
    Sse,
    /// `GET /poll`: a long-poll.
    Poll,
    /// `POST /send`: one client op over plain HTTP.
    Send,
    /// `POST /api/disconnect`.
    Disconnect,
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// A file of the demo (when it is on): its content type and bytes.
    Static(&'static str, &'static [u8]),
    /// Any other `/api/*` request (the API answers `404` itself for a path
    /// it does not know).
    Api,
    NotFound,
}

/// The WebSocket routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// `/echo`: every message comes back.
    Echo,
    /// `/ws`: the gateway's client protocol.
    Gateway,
}

/// The routes the configuration turns on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Routes {
    /// `/echo` (`echo`).
    pub echo: bool,
    /// The demo and the JavaScript client (`demo`).
    pub demo: bool,
}

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub route: Route,
    /// A long-lived connection (`/ws`, `/echo`, `/sse`, `/poll`, whatever
    /// the method): it takes a token of the worker's handshake rate.
    pub rate_limited: bool,
    /// `allowed_origins` applies (the WebSocket routes check it at the
    /// upgrade; the browser transports and the API before anything runs).
    pub origin_checked: bool,
}

/// Route a request.
pub fn route(method: &str, path: &str, routes: Routes) -> Decision {
    let echo = path == "/echo" && routes.echo;
    let rate_limited = echo || matches!(path, "/ws" | "/sse" | "/poll");
    let upgrade = match path {
        "/echo" if routes.echo => Some(Upgrade::Echo),
        "/ws" => Some(Upgrade::Gateway),
        _ => None,
    };
    let route = match (upgrade, method, path) {
        (Some(u), _, _) => Route::Upgrade(u),
        (None, "GET", "/healthz") => Route::Health,
        (None, "GET", "/sse") => Route::Sse,
        (None, "GET", "/poll") => Route::Poll,
        (None, "POST", "/send") => Route::Send,
        (None, "POST", "/api/disconnect") => Route::Disconnect,
        (None, "GET", p) if routes.demo && static_files::lookup(p).is_some() => {
            let (content_type, body) = static_files::lookup(p).expect("just found");
            Route::Static(content_type, body)
        }
        (None, "GET", "/metrics") => Route::Metrics,
        (None, _, p) if api::is_api_path(p) => Route::Api,
        _ => Route::NotFound,
    };
    Decision {
        route,
        rate_limited,
        origin_checked: upgrade.is_some() || super::origin_applies(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let on = Routes {
            echo: true,
            demo: true,
        };
        let off = Routes {
            echo: false,
            demo: false,
        };
        let js = static_files::lookup("/wsgate.js").expect("the client is served");
        let (g, e) = (self::Upgrade::Gateway, self::Upgrade::Echo);
        use Route::*;
        // (method, path, routes) → (route, rate limited, origin checked)
        let cases: &[(&str, &str, Routes, Route, bool, bool)] = &[
            ("GET", "/ws", on, Upgrade(g), true, true),
            ("POST", "/ws", on, Upgrade(g), true, true),
            ("GET", "/echo", on, Upgrade(e), true, true),
            ("GET", "/echo", off, NotFound, false, false),
            ("GET", "/sse", on, Sse, true, true),
            ("POST", "/sse", on, NotFound, true, true),
            ("GET", "/poll", on, Poll, true, true),
            ("HEAD", "/poll", on, NotFound, true, true),
            ("POST", "/send", on, Send, false, true),
            ("GET", "/send", on, NotFound, false, true),
            ("POST", "/api/disconnect", on, Disconnect, false, true),
            ("GET", "/api/disconnect", on, Api, false, true),
            ("POST", "/api/publish", on, Api, false, true),
            ("GET", "/api/stats", off, Api, false, true),
            ("DELETE", "/api/nope", on, Api, false, true),
            ("GET", "/healthz", on, Health, false, false),
            ("POST", "/healthz", on, NotFound, false, false),
            ("GET", "/metrics", on, Metrics, false, false),
            ("GET", "/wsgate.js", on, Static(js.0, js.1), false, false),
            ("GET", "/wsgate.js", off, NotFound, false, false),
            ("POST", "/wsgate.js", on, NotFound, false, false),
            ("GET", "/nope", on, NotFound, false, false),
            ("GET", "/ws/", on, NotFound, false, false),
            ("GET", "/apix", on, NotFound, false, false),
        ];
        for &(method, path, routes, want, rate, origin) in cases {
            let d = route(method, path, routes);
            assert_eq!(
                (d.route, d.rate_limited, d.origin_checked),
                (want, rate, origin),
                "{method} {path} {routes:?}"
            );
        }
        assert!(
            matches!(route("GET", "/", on).route, Static(..)),
            "the demo"
        );
    }
}
