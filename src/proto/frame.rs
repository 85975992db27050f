//! Frame headers (RFC 6455 §5.2): parsing without allocation, and encoding.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! ```

use super::error::Error;

/// The largest header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER: usize = 14;

/// Frame opcodes (RFC 6455 §5.2, §11.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// Parse the 4-bit opcode.
    ///
    /// RFC 6455 §5.2: "If an unknown opcode is received, the receiving
    /// endpoint MUST _Fail the WebSocket Connection_."
    pub fn from_u8(v: u8) -> Result<Self, Error> {
        Ok(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return Err(Error::ReservedOpcode),
        })
    }

    /// Control frames have the high bit of the opcode set (§5.5).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits (RSV1 = 0b100).
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes taken by the header itself (2..=14).
    pub header_len: usize,
}

/// What the receiver accepts; checked while parsing, before any payload is
/// buffered.
#[derive(Clone, Copy, Debug)]
pub struct HeaderRules {
    /// Frames must carry a mask (server role) or must not (client role).
    pub expect_masked: bool,
    /// RSV bits that a negotiated extension defines (0b100 for deflate).
    pub allowed_rsv: u8,
    /// Largest payload accepted in one frame.
    pub max_payload: u64,
}

impl Header {
    /// Parse a header from the front of `buf`. `Ok(None)`: not enough bytes yet.
    pub fn parse(buf: &[u8], rules: &HeaderRules) -> Result<Option<Header>, Error> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        // §5.2: "RSV1, RSV2, RSV3: MUST be 0 unless an extension is negotiated
        // that defines meanings for non-zero values. If a nonzero value is
        // received and none of the negotiated extensions defines the meaning
        // of such a nonzero value, the receiving endpoint MUST _Fail the
        // WebSocket Connection_."
        if rsv & !rules.allowed_rsv != 0 {
            return Err(Error::ReservedBits);
        }
        let opcode = OpCode::from_u8(b0 & 0x0F)?;
        let masked = b1 & 0x80 != 0;
        // §5.1: "The server MUST close the connection upon receiving a frame
        // that is not masked." / "A client MUST close a connection if it
        // detects a masked frame."
        if masked != rules.expect_masked {
            return Err(if rules.expect_masked {
                Error::UnmaskedFrame
            } else {
                Error::MaskedFrame
            });
        }
        if opcode.is_control() {
            // §5.5: "All control frames MUST have a payload length of 125
            // bytes or less and MUST NOT be fragmented."
            if !fin {
                return Err(Error::FragmentedControl);
            }
            if b1 & 0x7F > 125 {
                return Err(Error::ControlTooLong);
            }
        }
        let (payload_len, mut pos) = match b1 & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
                // §5.2: "the most significant bit MUST be 0".
                if n >> 63 != 0 {
                    return Err(Error::LengthMsb);
                }
                (n, 10)
            }
            n => (n as u64, 2),
        };
        // Refuse an oversized frame from its header, before buffering it.
        if payload_len > rules.max_payload {
            return Err(Error::MessageTooBig);
        }
        let mask = if masked {
            if buf.len() < pos + 4 {
                return Ok(None);
            }
            let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(m)
        } else {
            None
        };
        Ok(Some(Header {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
            header_len: pos,
        }))
    }
}

/// Write a frame header into `out`; returns its length. Lengths use the
/// minimal encoding (§5.2: "the minimal number of bytes MUST be used").
pub fn encode_header(
    out: &mut [u8; MAX_HEADER],
    fin: bool,
    rsv: u8,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    len: u64,
) -> usize {
    out[0] = (fin as u8) << 7 | (rsv & 7) << 4 | opcode as u8;
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    let mut pos = if len < 126 {
        out[1] = mbit | len as u8;
        2
    } else if len <= u16::MAX as u64 {
        out[1] = mbit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mbit | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(m) = mask {
        out[pos..pos + 4].copy_from_slice(&m);
        pos += 4;
    }
    pos
}

/// Append a whole unmasked frame (server role) to `out`. Handlers use it
/// to answer from inside [`Conn::decode`](super::Conn::decode)'s callback.
pub fn put_frame<O: super::Output + ?Sized>(out: &mut O, opcode: OpCode, payload: &[u8]) {
    let mut h = [0u8; MAX_HEADER];
    let n = encode_header(&mut h, true, 0, opcode, None, payload.len() as u64);
    out.reserve(n + payload.len());
    out.put(&h[..n]);
    out.put(payload);
}

/// An unmasked text frame (server role) around `payload`, and its header
/// length: what a publication or an event is encoded into once, to be
/// shared by every subscriber as a [`crate::base::Frame`].
pub fn text_frame(payload: &[u8]) -> (Vec<u8>, u8) {
    let mut h = [0u8; MAX_HEADER];
    let n = encode_header(&mut h, true, 0, OpCode::Text, None, payload.len() as u64);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&h[..n]);
    frame.extend_from_slice(payload);
    (frame, n as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: HeaderRules = HeaderRules {
        expect_masked: true,
        allowed_rsv: 0,
        max_payload: 1 << 20,
    };

    #[test]
    fn parse_table() {
        type Want = Result<Option<(bool, OpCode, u64, usize)>, Error>;
        let m = [0x80u8, 0, 0, 0]; // mask bytes follow where needed
        let cases: Vec<(Vec<u8>, Want)> = vec![
            (vec![], Ok(None)),
            (vec![0x81], Ok(None)),
            (vec![0x81, 0x85], Ok(None)), // mask key missing
            (
                [&[0x81, 0x85][..], &m].concat(),
                Ok(Some((true, OpCode::Text, 5, 6))),
            ),
            (
                [&[0x02, 0x80][..], &m].concat(),
                Ok(Some((false, OpCode::Binary, 0, 6))),
            ),
            (
                [&[0x82, 0xFE, 0x01, 0x00][..], &m].concat(),
                Ok(Some((true, OpCode::Binary, 256, 8))),
            ),
            (vec![0x82, 0xFE, 0x01], Ok(None)),
            (
                [&[0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0][..], &m].concat(),
                Ok(Some((true, OpCode::Binary, 65536, 14))),
            ),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
                Err(Error::LengthMsb),
            ),
            (
                vec![0x82, 0xFF, 0, 0, 0, 0, 0x40, 0, 0, 0],
                Err(Error::MessageTooBig),
            ), // 1 GiB
            (vec![0x81, 0x05], Err(Error::UnmaskedFrame)),
            (vec![0xC1, 0x80], Err(Error::ReservedBits)), // RSV1
            (vec![0xA1, 0x80], Err(Error::ReservedBits)), // RSV2
            (vec![0x91, 0x80], Err(Error::ReservedBits)), // RSV3
            (vec![0x83, 0x80], Err(Error::ReservedOpcode)),
            (vec![0x87, 0x80], Err(Error::ReservedOpcode)),
            (vec![0x8B, 0x80], Err(Error::ReservedOpcode)),
            (vec![0x8F, 0x80], Err(Error::ReservedOpcode)),
            (vec![0x09, 0x80], Err(Error::FragmentedControl)),
            (vec![0x89, 0xFE], Err(Error::ControlTooLong)),
            (vec![0x88, 0xFE], Err(Error::ControlTooLong)),
            (
                [&[0x89, 0xFD][..], &m].concat(),
                Ok(Some((true, OpCode::Ping, 125, 6))),
            ),
        ];
        for (bytes, want) in cases {
            let got = Header::parse(&bytes, &SERVER)
                .map(|o| o.map(|h| (h.fin, h.opcode, h.payload_len, h.header_len)));
            assert_eq!(got, want, "{bytes:02x?}");
        }
    }

    #[test]
    fn client_role_refuses_masked_frames() {
        let client = HeaderRules {
            expect_masked: false,
            ..SERVER
        };
        assert_eq!(
            Header::parse(&[0x81, 0x81, 1, 2, 3, 4], &client),
            Err(Error::MaskedFrame)
        );
        assert!(Header::parse(&[0x81, 0x01], &client).unwrap().is_some());
    }

    #[test]
    fn negotiated_rsv1_is_accepted() {
        let deflate = HeaderRules {
            allowed_rsv: 0b100,
            ..SERVER
        };
        assert!(Header::parse(&[0xC1, 0x80, 0, 0, 0, 0], &deflate)
            .unwrap()
            .is_some());
        assert_eq!(
            Header::parse(&[0xA1, 0x80], &deflate),
            Err(Error::ReservedBits)
        );
    }

    #[test]
    fn encode_roundtrip_uses_minimal_lengths() {
        for (len, hlen) in [
            (0u64, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (1 << 40, 10),
        ] {
            let mut h = [0u8; MAX_HEADER];
            let n = encode_header(&mut h, true, 0, OpCode::Binary, None, len);
            assert_eq!(n, hlen, "len {len}");
            let rules = HeaderRules {
                expect_masked: false,
                allowed_rsv: 0,
                max_payload: u64::MAX >> 1,
            };
            let p = Header::parse(&h[..n], &rules).unwrap().unwrap();
            assert_eq!((p.payload_len, p.header_len, p.fin), (len, hlen, true));
        }
        let mut h = [0u8; MAX_HEADER];
        let n = encode_header(&mut h, false, 0, OpCode::Text, Some([9, 8, 7, 6]), 300);
        assert_eq!(&h[..n], &[0x01, 0xFE, 0x01, 0x2C, 9, 8, 7, 6]);
    }
}
