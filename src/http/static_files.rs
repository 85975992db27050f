//! The demo page and the JavaScript client, compiled into the binary so the
//! gateway serves them with nothing from outside (turn off with
//! `demo = false`).

/// `(content type, body)` for a static path.
pub fn lookup(path: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            include_bytes!("../../web/index.html"),
        ),
        "/wsgate.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../web/wsgate.js"),
        ),
        "/demo.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../web/demo.js"),
        ),
        "/demo.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../../web/demo.css"),
        ),
        _ => return None,
    })
}
