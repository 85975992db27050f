//! A request's query string: percent-decoding, and [`Query`], whose
//! every component was checked once so that reading a parameter cannot
//! fail (a malformed one is never taken for an absent one).

/// Decode one `application/x-www-form-urlencoded` component; `None` when
/// it is not valid percent-encoding (a `%` without two hex digits) of
/// UTF-8.
pub fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(v);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A request's query string whose every component decodes
/// ([`Query::parse`] checked them all once), so reading a parameter cannot
/// fail, and a malformed one is never silently taken for an absent one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Query<'q>(&'q str);

/// A query component that is not valid percent-encoded UTF-8: the request
/// gets 400 (error code 3) with a message naming the parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadQuery {
    /// The parameter's name, decoded if it decodes, else as sent
    /// (shortened to 64 bytes).
    pub name: String,
}

impl std::fmt::Display for BadQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query parameter {:?} is not valid percent-encoded UTF-8",
            self.name
        )
    }
}

impl<'q> Query<'q> {
    /// Check every `name=value` component of `raw` (the query, without `?`).
    pub fn parse(raw: &'q str) -> Result<Query<'q>, BadQuery> {
        for kv in raw.split('&') {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let name = url_decode(k);
            if name.is_none() || url_decode(v).is_none() {
                let mut name = name.unwrap_or_else(|| k.to_string());
                if name.len() > 64 {
                    let mut end = 64;
                    while !name.is_char_boundary(end) {
                        end -= 1;
                    }
                    name.truncate(end);
                }
                return Err(BadQuery { name });
            }
        }
        Ok(Query(raw))
    }

    /// The decoded values of a parameter, in order.
    pub fn values(self, name: &'q str) -> impl Iterator<Item = String> + 'q {
        self.0.split('&').filter_map(move |kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            // Both decode: `Query::parse` checked every component.
            let decoded = |c: &str| url_decode(c).expect("checked by Query::parse");
            (decoded(k) == name).then(|| decoded(v))
        })
    }

    /// The first decoded value of a parameter.
    pub fn value(self, name: &'q str) -> Option<String> {
        self.values(name).next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query() {
        let q = Query::parse("channel=a&channel=b%3Ac&x=1+2&channel=&%63hannel=d&flag").unwrap();
        assert_eq!(
            q.values("channel").collect::<Vec<_>>(),
            vec!["a", "b:c", "", "d"]
        );
        assert_eq!(q.value("x").as_deref(), Some("1 2"));
        assert_eq!(q.value("flag").as_deref(), Some(""));
        assert_eq!(q.value("y"), None);
        assert_eq!(url_decode("%zz"), None);
        assert_eq!(Query::parse("").unwrap().value("channel"), None);
    }

    /// A component that does not decode refuses the whole query, naming
    /// the parameter: never read as if it were absent.
    #[test]
    fn bad_query_table() {
        let cases: &[(&str, &str)] = &[
            ("cursor=%zz", "cursor"),
            ("channel=a&cursor=abc%", "cursor"),
            ("cursor=%4", "cursor"),
            ("last_event_id=%E2%28%A1", "last_event_id"),
            ("channel=%FF", "channel"),
            ("user=%C0%80", "user"),
            ("token=a%2", "token"),
            ("wait=%", "wait"),
            ("%63hannel=%G0", "channel"),
            ("a%zz=1", "a%zz"),
            ("%FF=1", "%FF"),
        ];
        for (raw, name) in cases {
            let e = Query::parse(raw).expect_err(raw);
            assert_eq!(e.name, *name, "{raw:?}");
            assert!(e.to_string().contains(&format!("{name:?}")), "{e}");
        }
        let long = format!("{}%=1", "n".repeat(100));
        assert_eq!(Query::parse(&long).unwrap_err().name.len(), 64);
    }
}
