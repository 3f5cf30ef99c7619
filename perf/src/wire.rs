//! The bytes both ends of the load generator agree on: prices read back as the server
//! prints them (`tickstock_engine::encode::write_price`), the per-trade checksum, a scanner
//! that reads the fields it needs out of the server's event arrays without building a JSON
//! tree, and the clients' WebSocket frame reader (a client reads millions of events a
//! second).

use std::io::{Cursor, Read, Write};
use std::ops::ControlFlow;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

use tickstock_engine::limits::PRICE_SCALE as SCALE;

/// Reads a decimal price into millionths; `None` if it is not one (or has over 6 decimals).
pub fn parse_price(text: &[u8]) -> Option<i64> {
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let (whole, frac) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &text[..0]),
    };
    if whole.is_empty() || frac.len() > 6 || (text.len() > whole.len() && frac.is_empty()) {
        return None;
    }
    let mut value = digits(whole)?.checked_mul(SCALE as u64)?;
    let mut scale = SCALE as u64;
    for &b in frac {
        scale /= 10;
        value = value.checked_add(u64::from(digit(b)?) * scale)?;
    }
    let value = i64::try_from(value).ok()?;
    Some(if negative { -value } else { value })
}

fn digit(b: u8) -> Option<u8> {
    b.is_ascii_digit().then(|| b - b'0')
}

fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| n.checked_mul(10)?.checked_add(u64::from(digit(b)?)))
}

/// splitmix64's finalizer: a cheap, well-mixed 64-bit hash.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One trade's contribution to a step's checksum: id, price and size must all arrive intact.
pub fn trade_mix(k: u64, price: i64, size: u64) -> u64 {
    mix(k ^ mix(price as u64 ^ mix(size)))
}

/// One event's contribution to the cross-client checksum of a `seq` range.
pub fn event_mix(seq: u64, ev: &[u8]) -> u64 {
    let kind = ev.iter().fold(0u64, |h, &b| (h << 8) | u64::from(b));
    mix(seq ^ mix(kind))
}

/// What a client needs of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A `T` event: `seq`, and the trade's id, price and size.
    Trade {
        /// `seq`.
        seq: u64,
        /// `i`.
        k: u64,
        /// `p`, millionths.
        price: i64,
        /// `s`.
        size: u64,
    },
    /// Any other data event.
    Other {
        /// `ev`.
        ev: &'a [u8],
        /// `seq`.
        seq: u64,
    },
    /// A `status` object.
    Status {
        /// `status`.
        status: &'a [u8],
        /// `dropped` (of `conflated`), else 0.
        dropped: u64,
    },
}

/// Why a message could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

/// Calls `f` for each event of one server message (a JSON array of event objects).
///
/// One pass: each object's `"key":value` pairs are walked with `memchr` jumps, strings and
/// arrays skipped whole, so a brace or comma inside a string cannot split an object.
pub fn for_each_event<'a>(text: &'a [u8], mut f: impl FnMut(Event<'a>)) -> Result<(), Malformed> {
    let malformed =
        |at: &[u8]| Malformed(format!("not an array of event objects near: {}", excerpt(at)));
    let mut rest = match text.split_first() {
        Some((b'[', rest)) => rest,
        _ => return Err(malformed(text)),
    };
    loop {
        match rest.split_first() {
            Some((b']', _)) => return Ok(()),
            Some((b',', tail)) => rest = tail,
            Some((b'{', tail)) => {
                let (object, tail) = walk_object(tail).ok_or_else(|| malformed(rest))?;
                rest = tail;
                f(object.event().ok_or_else(|| malformed(object.raw))?);
            }
            _ => return Err(malformed(rest)),
        }
    }
}

/// The fields of one object the load generator reads.
#[derive(Default)]
struct Fields<'a> {
    raw: &'a [u8],
    ev: Option<&'a [u8]>,
    seq: Option<&'a [u8]>,
    i: Option<&'a [u8]>,
    p: Option<&'a [u8]>,
    s: Option<&'a [u8]>,
    status: Option<&'a [u8]>,
    dropped: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// Whether a data event has every field read (`status` objects are walked whole).
    fn complete(&self) -> bool {
        match self.ev {
            Some(b"\"status\"") | None => false,
            Some(b"\"T\"") => {
                self.seq.is_some() && self.i.is_some() && self.p.is_some() && self.s.is_some()
            }
            Some(_) => self.seq.is_some(),
        }
    }

    fn event(&self) -> Option<Event<'a>> {
        let ev = unquote(self.ev?)?;
        if ev == b"status" {
            let status = self.status.and_then(unquote).unwrap_or_default();
            let dropped = self.dropped.and_then(digits).unwrap_or(0);
            return Some(Event::Status { status, dropped });
        }
        let seq = digits(self.seq?)?;
        if ev == b"T" {
            let k = digits(unquote(self.i?)?)?;
            let price = parse_price(self.p?)?;
            let size = digits(self.s?)?;
            Some(Event::Trade { seq, k, price, size })
        } else {
            Some(Event::Other { ev, seq })
        }
    }
}

fn unquote(value: &[u8]) -> Option<&[u8]> {
    value.strip_prefix(b"\"")?.strip_suffix(b"\"")
}

/// Walks `"key":value,...}` (after the `{`); returns the fields and what follows the `}`.
fn walk_object(text: &[u8]) -> Option<(Fields<'_>, &[u8])> {
    let mut fields = Fields::default();
    let mut at = 0;
    loop {
        match text.get(at)? {
            b'}' => {
                fields.raw = &text[..at];
                return Some((fields, &text[at + 1..]));
            }
            b',' => at += 1,
            b'"' => {
                let key_end = at + 1 + memchr::memchr(b'"', &text[at + 1..])?;
                let key = &text[at + 1..key_end];
                if text.get(key_end + 1) != Some(&b':') {
                    return None;
                }
                let start = key_end + 2;
                let end = match text.get(start)? {
                    b'"' => string_end(text, start + 1)? + 1,
                    b'[' => start + memchr::memchr(b']', &text[start..])? + 1,
                    _ => start + memchr::memchr2(b',', b'}', &text[start..])?,
                };
                let value = &text[start..end];
                match key {
                    b"ev" => fields.ev = Some(value),
                    b"seq" => fields.seq = Some(value),
                    b"i" => fields.i = Some(value),
                    b"p" => fields.p = Some(value),
                    b"s" => fields.s = Some(value),
                    b"status" => fields.status = Some(value),
                    b"dropped" => fields.dropped = Some(value),
                    _ => {}
                }
                at = end;
                if fields.complete() {
                    // A data event's strings (tickers, labels, trade ids) hold no braces:
                    // the rest of the object can be skipped in one jump.
                    let close = at + memchr::memchr(b'}', &text[at..])?;
                    fields.raw = &text[..close];
                    return Some((fields, &text[close + 1..]));
                }
            }
            _ => return None,
        }
    }
}

/// The index of the closing quote of a string whose body starts at `from`.
fn string_end(text: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + memchr::memchr2(b'"', b'\\', &text[from..])?;
        if text[at] == b'"' {
            return Some(at);
        }
        from = at + 2;
    }
}

fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned()
}

/// Largest server frame a client accepts: well above the server's `frame_bytes_max`.
pub const FRAME_BYTES_MAX: usize = 16 << 20;
/// The least a read asks the socket for.
const READ_BYTES_MIN: usize = 256 * 1024;

/// What a client receives, message by message.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A whole text or binary message (fragments joined).
    Message(&'a [u8]),
    /// A whole message compressed with permessage-deflate (RSV1 set; only when the reader's
    /// `deflate` is on): its raw deflate bytes, without the `00 00 ff ff` tail
    /// ([`Inflater`] gives the text).
    Compressed(&'a [u8]),
    /// A close frame: its code (0 without one) and reason.
    Close(u16, String),
}

/// How a read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// The socket has nothing more now.
    WouldBlock,
    /// The callback asked to stop; what was read after that message is kept.
    Stopped,
    /// The server closed the TCP connection.
    Eof,
}

/// The client's side of server-to-client WebSocket frames, read straight from the socket
/// into a buffer the reader thread shares between its connections.
///
/// tungstenite does the framing rules (`FrameHeader::parse`, and the masked frames a client
/// sends), but its `WebSocket::read` zero-fills 16 KiB before every `read` and copies each
/// message out: at 20 M client-events/s that was an eighth of the machine, more than the
/// checks. Here a connection keeps only the bytes of a frame that has not arrived whole.
/// Text is not UTF-8-checked: the scanner reads every byte of it, and a client compares
/// each message's hash or its events with what was played.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Read but not yet a whole frame.
    pending: Vec<u8>,
    /// The fragments of a message whose last frame has not arrived.
    fragments: Vec<u8>,
    fragmented: bool,
    /// The fragmented message's first frame had RSV1 (it is compressed).
    fragments_compressed: bool,
    /// permessage-deflate was negotiated: a message's first frame may set RSV1.
    pub deflate: bool,
    /// Bytes read from the socket (frames, headers and all), for bytes-on-the-wire figures.
    pub bytes: u64,
    /// `pending` may hold whole frames: the callback stopped before them.
    stopped: bool,
    /// The payload of the last ping, to answer.
    pong_due: Option<Vec<u8>>,
    /// Pings answered.
    pub pings: u64,
}

impl FrameReader {
    /// A reader with nothing read yet.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Reads from `stream` until it would block (or `each` breaks, or the stream ends),
    /// calling `each` for every message and close frame. `scratch` is the reader thread's
    /// buffer; it grows to hold the largest frame seen. Pings are answered after the reads.
    pub fn read<S: Read + Write>(
        &mut self,
        stream: &mut S,
        scratch: &mut Vec<u8>,
        mut each: impl FnMut(Incoming<'_>) -> ControlFlow<()>,
    ) -> std::io::Result<Drained> {
        let outcome = loop {
            if std::mem::take(&mut self.stopped) {
                let kept = std::mem::take(&mut self.pending);
                match self.frames(&kept, &mut each) {
                    Ok(ControlFlow::Continue(())) => {}
                    Ok(ControlFlow::Break(())) => break Ok(Drained::Stopped),
                    Err(e) => break Err(e),
                }
            }
            let kept = self.pending.len();
            if scratch.len() < kept + READ_BYTES_MIN {
                scratch.resize(kept + READ_BYTES_MIN, 0);
            }
            scratch[..kept].copy_from_slice(&self.pending);
            let n = match stream.read(&mut scratch[kept..]) {
                Ok(0) => break Ok(Drained::Eof),
                Ok(n) => {
                    self.bytes += n as u64;
                    n
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break Ok(Drained::WouldBlock)
                }
                Err(e) => break Err(e),
            };
            self.pending.clear();
            match self.frames(&scratch[..kept + n], &mut each) {
                Ok(ControlFlow::Continue(())) => {}
                Ok(ControlFlow::Break(())) => break Ok(Drained::Stopped),
                Err(e) => break Err(e),
            }
        };
        if let Some(payload) = self.pong_due.take() {
            self.pings += 1;
            send(stream, Frame::pong(payload))?;
        }
        outcome
    }

    /// Takes the whole frames of `bytes`; keeps the rest in `pending`.
    fn frames(
        &mut self,
        bytes: &[u8],
        each: &mut impl FnMut(Incoming<'_>) -> ControlFlow<()>,
    ) -> std::io::Result<ControlFlow<()>> {
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut at = 0;
        while at < bytes.len() {
            let mut cursor = Cursor::new(&bytes[at..]);
            let Some((header, length)) =
                FrameHeader::parse(&mut cursor).map_err(|e| bad(e.to_string()))?
            else {
                break;
            };
            let start = at + cursor.position() as usize;
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            if length > FRAME_BYTES_MAX {
                return Err(bad(format!("a {length}-byte frame (limit {FRAME_BYTES_MAX})")));
            }
            if bytes.len() - start < length {
                break;
            }
            // RSV1 is permessage-deflate's, on the first frame of a data message only.
            let first_data = matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
            let compressed = header.rsv1 && self.deflate && first_data;
            if header.mask.is_some() || (header.rsv1 && !compressed) || header.rsv2 || header.rsv3 {
                return Err(bad("a masked or extended frame from the server".into()));
            }
            let payload = &bytes[start..start + length];
            at = start + length;
            let whole = |payload| {
                if compressed {
                    Incoming::Compressed(payload)
                } else {
                    Incoming::Message(payload)
                }
            };
            let flow = match header.opcode {
                OpCode::Data(Data::Continue) if !self.fragmented => {
                    return Err(bad("a continuation frame with no message".into()))
                }
                OpCode::Data(Data::Text | Data::Binary) if self.fragmented => {
                    return Err(bad("a new message inside a fragmented one".into()))
                }
                OpCode::Data(Data::Text | Data::Binary) if header.is_final => each(whole(payload)),
                OpCode::Data(Data::Text | Data::Binary | Data::Continue) => {
                    if first_data {
                        self.fragments_compressed = compressed;
                    }
                    self.fragments.extend_from_slice(payload);
                    self.fragmented = !header.is_final;
                    if header.is_final {
                        let flow = each(if self.fragments_compressed {
                            Incoming::Compressed(&self.fragments)
                        } else {
                            Incoming::Message(&self.fragments)
                        });
                        self.fragments.clear();
                        flow
                    } else {
                        ControlFlow::Continue(())
                    }
                }
                OpCode::Control(Control::Ping) => {
                    self.pong_due = Some(payload.to_vec());
                    ControlFlow::Continue(())
                }
                OpCode::Control(Control::Close) => {
                    let code = payload.get(..2).map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                    each(Incoming::Close(code, reason.into_owned()))
                }
                OpCode::Control(Control::Pong) => ControlFlow::Continue(()),
                OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                    return Err(bad(format!("opcode {:?} from the server", header.opcode)))
                }
            };
            if flow.is_break() {
                self.pending.extend_from_slice(&bytes[at..]);
                self.stopped = true;
                return Ok(ControlFlow::Break(()));
            }
        }
        self.pending.extend_from_slice(&bytes[at..]);
        Ok(ControlFlow::Continue(()))
    }
}

/// The offer a client makes to compress (RFC 7692): no context kept between messages on
/// either side, so every message inflates on its own (and a reader may skip the ones it
/// has already checked).
pub const DEFLATE_OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Inflates permessage-deflate messages sent with `server_no_context_takeover`: each on its
/// own, with the `00 00 ff ff` tail put back (RFC 7692 §7.2.2).
pub struct Inflater {
    state: flate2::Decompress,
    out: Vec<u8>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Inflater {
        Inflater { state: flate2::Decompress::new(false), out: Vec::new() }
    }
}

impl Inflater {
    /// The text of one compressed message; an error if it is not valid deflate or inflates
    /// past [`FRAME_BYTES_MAX`].
    pub fn inflate(&mut self, compressed: &[u8]) -> std::io::Result<&[u8]> {
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        self.state.reset(false);
        self.out.clear();
        let tail = [0u8, 0, 0xff, 0xff];
        for input in [compressed, &tail[..]] {
            let mut at = 0;
            loop {
                if self.out.len() == self.out.capacity() {
                    if self.out.len() >= FRAME_BYTES_MAX {
                        return Err(bad(format!(
                            "a message inflating past {FRAME_BYTES_MAX} bytes"
                        )));
                    }
                    self.out.reserve((compressed.len() * 4).max(4096));
                }
                let before = self.state.total_in();
                self.state
                    .decompress_vec(&input[at..], &mut self.out, flate2::FlushDecompress::Sync)
                    .map_err(|e| bad(format!("a compressed message that does not inflate: {e}")))?;
                at += (self.state.total_in() - before) as usize;
                if at >= input.len() && self.out.len() < self.out.capacity() {
                    break;
                }
            }
        }
        Ok(&self.out)
    }
}

/// Writes one client frame (masked, as a client's must be), whole.
pub fn send(stream: &mut impl Write, mut frame: Frame) -> std::io::Result<()> {
    frame.header_mut().mask = Some(next_mask());
    let mut bytes = Vec::with_capacity(frame.len());
    frame.format(&mut bytes).map_err(std::io::Error::other)?;
    stream.write_all(&bytes)
}

/// A client text message.
pub fn text(text: String) -> Frame {
    Frame::message(text, OpCode::Data(Data::Text), true)
}

/// A fresh masking key: RFC 6455 wants them unpredictable to proxies; splitmix over the
/// clock and a counter is plenty for a load generator on its own network.
fn next_mask() -> [u8; 4] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (mix(nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed)) as u32).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickstock_engine::encode::write_price;
    use tickstock_engine::Price;

    #[test]
    fn prices_round_trip_as_the_server_prints_them() {
        for raw in [1, 10, 1_000_000, 187_250_000, 123_456_789, 50_000_000_000, -2_500_000] {
            let mut text = Vec::new();
            write_price(&mut text, Price::from_raw(raw));
            assert_eq!(parse_price(&text), Some(raw), "{}", String::from_utf8_lossy(&text));
        }
        for bad in ["", "1.", ".5", "1.2345678", "12a", "99999999999999999999"] {
            assert_eq!(parse_price(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn scans_trades_others_and_statuses() {
        let text = br#"[{"ev":"T","sym":"AAPL","seq":7,"p":187.25,"s":100,"t":1,"x":4,"i":"42","q":42},{"ev":"A","sym":"AAPL","seq":8,"o":1,"s":1000,"e":2000},{"ev":"status","status":"conflated","dropped":3}]"#;
        let mut seen = Vec::new();
        for_each_event(text, |e| seen.push(e)).expect("reads");
        assert_eq!(
            seen,
            vec![
                Event::Trade { seq: 7, k: 42, price: 187_250_000, size: 100 },
                Event::Other { ev: b"A", seq: 8 },
                Event::Status { status: b"conflated", dropped: 3 },
            ]
        );
    }

    /// A stream that hands out its bytes a few at a time, then would block.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        step: usize,
        written: Vec<u8>,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.bytes.len() {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = self.step.min(buf.len()).min(self.bytes.len() - self.at);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn server_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let frame = match opcode {
            OpCode::Control(Control::Ping) => Frame::ping(payload.to_vec()),
            _ => Frame::message(payload.to_vec(), opcode, fin),
        };
        let mut bytes = Vec::new();
        frame.format(&mut bytes).expect("formats");
        bytes
    }

    /// What a server sends for `text` with permessage-deflate: raw deflate, sync-flushed,
    /// the `00 00 ff ff` tail cut off.
    fn deflated(text: &[u8]) -> Vec<u8> {
        let mut compress = flate2::Compress::new(flate2::Compression::fast(), false);
        let mut out = Vec::with_capacity(text.len() + 64);
        compress.compress_vec(text, &mut out, flate2::FlushCompress::Sync).expect("deflates");
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    fn rsv1(mut frame: Vec<u8>) -> Vec<u8> {
        frame[0] |= 0x40;
        frame
    }

    #[test]
    fn compressed_messages_are_told_apart_and_inflate_on_their_own() {
        let text: Vec<u8> =
            (0..2_000).flat_map(|i| format!("{{\"ev\":\"T\",\"i\":{i}}},").into_bytes()).collect();
        let z = deflated(&text);
        assert!(z.len() * 4 < text.len(), "compresses");
        let mut stream = Vec::new();
        stream.extend(rsv1(server_frame(OpCode::Data(Data::Text), true, &z)));
        stream.extend(server_frame(OpCode::Data(Data::Text), true, b"[1]"));
        // Fragmented: RSV1 on the first frame only.
        let (head, rest) = z.split_at(z.len() / 2);
        stream.extend(rsv1(server_frame(OpCode::Data(Data::Text), false, head)));
        stream.extend(server_frame(OpCode::Data(Data::Continue), true, rest));
        let (mut reader, mut scratch, mut inflater) =
            (FrameReader::new(), Vec::new(), Inflater::default());
        reader.deflate = true;
        let mut seen = Vec::new();
        let mut trickle =
            Trickle { bytes: stream.clone(), at: 0, step: 1 << 20, written: Vec::new() };
        reader
            .read(&mut trickle, &mut scratch, |m| {
                seen.push(match m {
                    Incoming::Compressed(bytes) => {
                        assert_eq!(inflater.inflate(bytes).expect("inflates"), &text[..]);
                        "z"
                    }
                    Incoming::Message(b"[1]") => "plain",
                    other => panic!("{other:?}"),
                });
                ControlFlow::Continue(())
            })
            .expect("reads");
        assert_eq!(seen, ["z", "plain", "z"]);
        assert_eq!(reader.bytes, stream.len() as u64);
        assert!(inflater.inflate(b"\xff\xfe garbage").is_err());
        // Without the extension, RSV1 is a protocol error.
        let mut plain = FrameReader::new();
        let mut trickle = Trickle { bytes: stream, at: 0, step: 1 << 20, written: Vec::new() };
        assert!(plain.read(&mut trickle, &mut scratch, |_| ControlFlow::Continue(())).is_err());
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_pings_are_answered() {
        let big = vec![b'x'; 70_000];
        let mut stream = Vec::new();
        stream.extend(server_frame(OpCode::Data(Data::Text), true, b"[1]"));
        stream.extend(server_frame(OpCode::Data(Data::Text), false, b"[2,"));
        stream.extend(server_frame(OpCode::Control(Control::Ping), true, b"hi"));
        stream.extend(server_frame(OpCode::Data(Data::Continue), true, b"3]"));
        stream.extend(server_frame(OpCode::Data(Data::Binary), true, &big));
        let mut close = Vec::new();
        Frame::close(Some(tungstenite::protocol::CloseFrame {
            code: 4008.into(),
            reason: "slow consumer".into(),
        }))
        .format(&mut close)
        .expect("formats");
        stream.extend(close);
        for step in [1, 3, 7, 1000, 1 << 20] {
            let mut trickle = Trickle { bytes: stream.clone(), at: 0, step, written: Vec::new() };
            let (mut reader, mut scratch, mut seen) = (FrameReader::new(), Vec::new(), Vec::new());
            loop {
                let drained = reader
                    .read(&mut trickle, &mut scratch, |m| {
                        seen.push(match m {
                            Incoming::Message(bytes) => format!("{}", bytes.len()),
                            Incoming::Compressed(bytes) => format!("z{}", bytes.len()),
                            Incoming::Close(code, reason) => format!("{code} {reason}"),
                        });
                        ControlFlow::Continue(())
                    })
                    .expect("reads");
                assert_eq!(drained, Drained::WouldBlock);
                if trickle.at == trickle.bytes.len() {
                    break;
                }
            }
            assert_eq!(seen, ["3", "5", "70000", "4008 slow consumer"], "step {step}");
            assert_eq!(reader.pings, 1);
            // The pong is masked and carries the ping's payload.
            let (header, length) = FrameHeader::parse(&mut Cursor::new(&trickle.written))
                .expect("parses")
                .expect("whole");
            assert_eq!((header.opcode, length), (OpCode::Control(Control::Pong), 2));
            assert!(header.mask.is_some());
        }
    }

    #[test]
    fn a_stop_keeps_what_follows_and_bad_frames_are_errors() {
        let mut stream = server_frame(OpCode::Data(Data::Text), true, b"first");
        stream.extend(server_frame(OpCode::Data(Data::Text), true, b"second"));
        let mut trickle = Trickle { bytes: stream, at: 0, step: 1 << 20, written: Vec::new() };
        let (mut reader, mut scratch) = (FrameReader::new(), Vec::new());
        let mut seen = Vec::new();
        let mut take = |m: Incoming<'_>| {
            seen.push(format!("{m:?}"));
            ControlFlow::Break(())
        };
        assert_eq!(
            reader.read(&mut trickle, &mut scratch, &mut take).expect("reads"),
            Drained::Stopped
        );
        assert_eq!(
            reader.read(&mut trickle, &mut scratch, &mut take).expect("reads"),
            Drained::Stopped
        );
        assert_eq!(seen.len(), 2);
        assert!(seen[1].contains("[115, 101, 99"), "{seen:?}");

        let mut masked = Vec::new();
        let mut frame = Frame::message(b"x".to_vec(), OpCode::Data(Data::Text), true);
        frame.header_mut().mask = Some([1, 2, 3, 4]);
        frame.format(&mut masked).expect("formats");
        for bad in [masked, server_frame(OpCode::Data(Data::Continue), true, b"x")] {
            let mut trickle = Trickle { bytes: bad, at: 0, step: 64, written: Vec::new() };
            let error = FrameReader::new()
                .read(&mut trickle, &mut scratch, |_| ControlFlow::Continue(()))
                .expect_err("refused");
            assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(for_each_event(b"{\"ev\":\"T\"}", |_| {}).is_err());
        assert!(for_each_event(br#"[{"ev":"T","sym":"X","seq":1,"p":1}]"#, |_| {}).is_err());
        assert!(for_each_event(br#"[{"ev":"A","sym":"X"}]"#, |_| {}).is_err());
        assert!(for_each_event(b"[]", |_| panic!("no events")).is_ok());
    }
}
