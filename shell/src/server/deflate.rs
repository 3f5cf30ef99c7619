//! permessage-deflate (RFC 7692, PROTOCOL.md section 5): the negotiation, the compression of
//! a group's messages (once per message, for every member), and the inflation of compressed
//! client messages with a limit.
//!
//! The server answers an acceptable offer with `server_no_context_takeover` (each message is
//! compressed on its own, so one compressed message serves every connection of a group,
//! whatever each has received before) and `client_no_context_takeover` (a client's messages
//! are inflated on their own: no 32 KiB window kept per connection). Only the group streams
//! are compressed; statuses, replays and snapshots go uncompressed, which the extension
//! allows message by message.
//!
//! tungstenite, which decodes client frames, does not know the extension and refuses frames
//! with RSV1 set; [`Inflater`] sits in front of it and hands it each compressed message
//! inflated, as one masked frame with RSV1 clear, and every other frame as it came.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What the server answers an accepted offer with (`Sec-WebSocket-Extensions`), without a
/// window size.
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// An accepted offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The server's LZ77 window, in bits (9 to 15): 15 unless the client asked for less.
    pub window_bits: u8,
    /// The client asked for `server_max_window_bits`: the response names the window.
    pub window_asked: bool,
}

impl Accepted {
    /// The `Sec-WebSocket-Extensions` value of the response.
    pub fn response(&self) -> String {
        if self.window_asked {
            format!("{RESPONSE}; server_max_window_bits={}", self.window_bits)
        } else {
            RESPONSE.to_owned()
        }
    }
}

/// The tail a sync flush ends with, removed from each message (RFC 7692 section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The first of the client's `Sec-WebSocket-Extensions` offers (all its values,
/// comma-joined) that the server can accept: a `permessage-deflate` with known, well-formed
/// parameters, and a `server_max_window_bits` of 9 to 15 if any (raw deflate has no 8-bit
/// window: an offer of 8 is declined).
pub fn negotiate(offers: &str) -> Option<Accepted> {
    offers.split(',').find_map(|offer| {
        let mut parts = offer.split(';').map(str::trim);
        if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate")) {
            return None;
        }
        let mut accepted = Accepted { window_bits: 15, window_asked: false };
        for param in parts {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            let value = value.trim().trim_matches('"');
            let bits = value.parse::<u8>().ok();
            match name.trim().to_ascii_lowercase().as_str() {
                "server_no_context_takeover" | "client_no_context_takeover" if value.is_empty() => {
                }
                "client_max_window_bits"
                    if value.is_empty() || bits.is_some_and(|b| (8..=15).contains(&b)) => {}
                "server_max_window_bits" if bits.is_some_and(|b| (9..=15).contains(&b)) => {
                    accepted = Accepted { window_bits: bits?, window_asked: true };
                }
                _ => return None,
            }
        }
        Some(accepted)
    })
}

/// `server.compression_min_bytes` by default: a message smaller than this goes
/// uncompressed (a one-trade array of 90 bytes saves nothing and costs 3.4 us to deflate;
/// `docs/performance.md`).
pub const COMPRESSION_MIN_BYTES_DEFAULT: u32 = 512;

/// Compressors by window size, made as first needed (most servers only ever use 15).
pub struct Compressors {
    by_bits: [Option<Box<Compressor>>; 7],
    min_bytes: usize,
}

impl std::fmt::Debug for Compressors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressors").field("min_bytes", &self.min_bytes).finish_non_exhaustive()
    }
}

impl Default for Compressors {
    fn default() -> Compressors {
        Compressors::new(COMPRESSION_MIN_BYTES_DEFAULT as usize)
    }
}

impl Compressors {
    /// None yet; messages of `min_bytes` and more are worth compressing.
    pub fn new(min_bytes: usize) -> Compressors {
        Compressors { by_bits: Default::default(), min_bytes }
    }

    /// Whether a message with a payload of `len` bytes is worth compressing.
    pub fn wants(&self, len: usize) -> bool {
        len >= self.min_bytes
    }

    /// The compressor of a `window_bits` window (9 to 15; others get 15).
    pub fn get(&mut self, window_bits: u8) -> &mut Compressor {
        let bits = if (9..=15).contains(&window_bits) { window_bits } else { 15 };
        self.by_bits[usize::from(bits - 9)]
            .get_or_insert_with(|| Box::new(Compressor::new(Compression::fast(), bits)))
    }
}

/// Compresses messages one at a time (no context kept between them). One per event loop
/// and window size ([`Compressors`]): its state is large (hundreds of KiB), and a message
/// is compressed once for all the members of its group.
pub struct Compressor {
    compress: Compress,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").finish_non_exhaustive()
    }
}

impl Default for Compressor {
    fn default() -> Compressor {
        Compressor::new(Compression::fast(), 15)
    }
}

impl Compressor {
    /// A compressor at `level` with a window of `window_bits` (9 to 15).
    pub fn new(level: Compression, window_bits: u8) -> Compressor {
        Compressor { compress: Compress::new_with_window_bits(level, false, window_bits) }
    }

    /// Appends `payload` deflated, as one message of its own, to `out`.
    pub fn deflate(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        self.compress.reset();
        let start_in = self.compress.total_in();
        loop {
            out.reserve(payload.len() / 2 + 64);
            let consumed = (self.compress.total_in() - start_in) as usize;
            // Writing into a Vec's spare room cannot fail; a stream error is a bug in the
            // compressor's use, and the data sent would then be wrong: make it loud.
            self.compress
                .compress_vec(&payload[consumed..], out, FlushCompress::Sync)
                .expect("Invariant: deflating into a Vec succeeds");
            let all_in = (self.compress.total_in() - start_in) as usize == payload.len();
            if all_in && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
    }
}

/// Why a client's compressed message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// Compressed or inflated, it is larger than `client_message_bytes_max` (close 1009).
    TooBig,
    /// Not a valid compressed message (bad deflate data, an unmasked frame, RSV1 where it
    /// may not be): close 1002.
    Protocol,
}

/// Where the frame being read goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Reading a frame header.
    Header,
    /// Copying this many more payload bytes through unchanged.
    Pass(u64),
    /// Collecting this many more bytes of a compressed message's frame, unmasked with `mask`
    /// from position `at`; `last` when the frame ends the message.
    Collect { remaining: u64, mask: [u8; 4], at: usize, last: bool },
}

/// The client side of the extension, in front of tungstenite (module documentation).
#[derive(Debug)]
pub struct Inflater {
    /// Header bytes not yet whole.
    header: Vec<u8>,
    mode: Mode,
    /// The compressed message being collected: its opcode and its bytes so far.
    message: Option<(u8, Vec<u8>)>,
    /// `client_message_bytes_max`: the most an inflated message may be.
    limit: usize,
}

impl Inflater {
    /// An inflater whose messages may be `limit` bytes inflated.
    pub fn new(limit: usize) -> Inflater {
        Inflater { header: Vec::new(), mode: Mode::Header, message: None, limit }
    }

    /// Takes bytes read from the client; appends what tungstenite is to read to `out`.
    pub fn handle_read(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), InflateError> {
        while !input.is_empty() {
            match self.mode {
                Mode::Header => {
                    let (need, take) = header_len(&self.header, input);
                    self.header.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.header.len() == need {
                        self.start_frame(out)?;
                    }
                }
                Mode::Pass(remaining) => {
                    let n = remaining.min(input.len() as u64) as usize;
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.mode = if n as u64 == remaining {
                        Mode::Header
                    } else {
                        Mode::Pass(remaining - n as u64)
                    };
                }
                Mode::Collect { remaining, mask, at, last } => {
                    let n = remaining.min(input.len() as u64) as usize;
                    let (_, bytes) = self.message.as_mut().ok_or(InflateError::Protocol)?;
                    bytes
                        .extend(input[..n].iter().enumerate().map(|(i, b)| b ^ mask[(at + i) % 4]));
                    input = &input[n..];
                    if (n as u64) < remaining {
                        self.mode = Mode::Collect {
                            remaining: remaining - n as u64,
                            mask,
                            at: at + n,
                            last,
                        };
                    } else {
                        self.mode = Mode::Header;
                        if last {
                            self.finish_message(out)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole header is in `self.header`: decide where its frame goes.
    fn start_frame(&mut self, out: &mut Vec<u8>) -> Result<(), InflateError> {
        let header = std::mem::take(&mut self.header);
        let result = self.route_frame(&header, out);
        self.header = header;
        self.header.clear();
        result
    }

    fn route_frame(&mut self, header: &[u8], out: &mut Vec<u8>) -> Result<(), InflateError> {
        let (fin, rsv1, opcode) = (header[0] & 0x80 != 0, header[0] & 0x40 != 0, header[0] & 0x0f);
        let masked = header[1] & 0x80 != 0;
        let len = payload_len(header);
        let compressed_start = rsv1 && (opcode == 1 || opcode == 2);
        let continues = opcode == 0 && self.message.is_some();
        let interrupts = (opcode == 1 || opcode == 2) && self.message.is_some();
        if !(compressed_start || continues || interrupts) {
            // Everything else is tungstenite's to judge, byte for byte.
            out.extend_from_slice(header);
            self.mode = if len == 0 { Mode::Header } else { Mode::Pass(len) };
            return Ok(());
        }
        let data = opcode == 1 || opcode == 2;
        if !masked || (continues && rsv1) || (data && self.message.is_some()) {
            return Err(InflateError::Protocol);
        }
        let collected = self.message.as_ref().map_or(0, |(_, bytes)| bytes.len() as u64);
        if collected + len > (self.limit + self.limit / 64 + 64) as u64 {
            return Err(InflateError::TooBig);
        }
        if compressed_start {
            self.message = Some((opcode, Vec::with_capacity(len as usize)));
        }
        let at = header.len() - 4;
        let mask = [header[at], header[at + 1], header[at + 2], header[at + 3]];
        self.mode = Mode::Collect { remaining: len, mask, at: 0, last: fin };
        if len == 0 {
            self.mode = Mode::Header;
            if fin {
                self.finish_message(out)?;
            }
        }
        Ok(())
    }

    /// The compressed message is whole: inflate it (at most `limit` bytes) and hand it on as
    /// one masked frame (a zero mask key) with RSV1 clear.
    fn finish_message(&mut self, out: &mut Vec<u8>) -> Result<(), InflateError> {
        let (opcode, mut bytes) = self.message.take().ok_or(InflateError::Protocol)?;
        bytes.extend_from_slice(&TAIL);
        let mut inflate = Decompress::new(false);
        let mut inflated = Vec::new();
        loop {
            let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
            let room = (self.limit + 1).saturating_sub(inflated.len()).min(64 * 1024);
            if room == 0 {
                return Err(InflateError::TooBig);
            }
            inflated.reserve(room);
            let status = inflate
                .decompress_vec(&bytes[in_before as usize..], &mut inflated, FlushDecompress::Sync)
                .map_err(|_| InflateError::Protocol)?;
            if inflated.len() > self.limit {
                return Err(InflateError::TooBig);
            }
            let all_in = inflate.total_in() as usize == bytes.len();
            if status == Status::StreamEnd || (all_in && inflated.len() < inflated.capacity()) {
                break;
            }
            if inflate.total_in() == in_before && inflate.total_out() == out_before {
                return Err(InflateError::Protocol);
            }
        }
        write_frame(out, opcode, &inflated);
        Ok(())
    }
}

/// How long the header being read is (2 until its second byte is known), and how many bytes
/// of `input` it takes from here.
fn header_len(header: &[u8], input: &[u8]) -> (usize, usize) {
    let byte =
        |i: usize| if i < header.len() { header.get(i) } else { input.get(i - header.len()) };
    let Some(&second) = byte(1) else { return (2, input.len().min(2 - header.len())) };
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let need = 2 + extended + if second & 0x80 != 0 { 4 } else { 0 };
    (need, (need - header.len()).min(input.len()))
}

/// The payload length of a whole header.
fn payload_len(header: &[u8]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => u64::from_be_bytes(header[2..10].try_into().unwrap_or([0xff; 8])),
        len => u64::from(len),
    }
}

/// One final, masked (key 0: the payload as it is) frame of `opcode` holding `payload`.
fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(offers: &str) -> bool {
        negotiate(offers).is_some()
    }

    /// A client's frame: `first` byte (FIN, RSV1, opcode), masked with a key, `payload`.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            len if len < 126 => out.push(0x80 | len as u8),
            len if len <= 65_535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    fn deflated(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Compressor::default().deflate(text, &mut out);
        out
    }

    /// What tungstenite, as the server, reads from `bytes`.
    fn server_reads(bytes: &[u8]) -> Vec<String> {
        use tungstenite::protocol::{Role, WebSocketContext};
        struct Io<'a>(&'a [u8], Vec<u8>);
        impl std::io::Read for Io<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        impl std::io::Write for Io<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.1.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut ws = WebSocketContext::new(Role::Server, None);
        let mut io = Io(bytes, Vec::new());
        let mut texts = Vec::new();
        loop {
            match ws.read(&mut io) {
                Ok(tungstenite::Message::Text(text)) => texts.push(text.to_string()),
                Ok(other) => texts.push(format!("{other:?}")),
                Err(tungstenite::Error::Io(_)) => return texts,
                Err(error) => panic!("tungstenite refused what the inflater gave it: {error}"),
            }
        }
    }

    #[test]
    fn offers_are_accepted_with_the_window_asked_for_and_the_response_names_it() {
        let plain = Accepted { window_bits: 15, window_asked: false };
        assert_eq!(negotiate("permessage-deflate"), Some(plain));
        assert_eq!(negotiate("permessage-deflate; client_max_window_bits"), Some(plain));
        assert!(accepts("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=12"));
        assert!(accepts(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ));
        let nine = negotiate("permessage-deflate; server_max_window_bits=9").unwrap();
        assert_eq!(nine, Accepted { window_bits: 9, window_asked: true });
        assert_eq!(
            nine.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9"
        );
        assert_eq!(plain.response(), RESPONSE);
        let eight = "permessage-deflate; server_max_window_bits=8, permessage-deflate";
        assert_eq!(negotiate(eight), Some(plain), "8 bits declined, the next offer taken");
        assert!(!accepts("permessage-deflate; server_max_window_bits=8"));
        assert!(!accepts("permessage-deflate; unknown_param"));
        assert!(!accepts("x-webkit-deflate-frame"));
        assert!(!accepts(""));
    }

    #[test]
    fn a_smaller_window_compresses_and_inflates_back() {
        let text = "a window of 512 bytes, then the same words again ".repeat(40);
        let mut out = Vec::new();
        Compressors::default().get(9).deflate(text.as_bytes(), &mut out);
        let mut inflater = Inflater::new(1 << 16);
        let mut wire = Vec::new();
        inflater.handle_read(&client_frame(0xc1, &out), &mut wire).unwrap();
        assert_eq!(server_reads(&wire), [text]);
    }

    #[test]
    fn each_message_is_compressed_on_its_own_and_inflates_back() {
        let text = br#"[{"ev":"T","sym":"AAPL","seq":1,"p":187.25,"s":100},{"ev":"T","sym":"AAPL","seq":2,"p":187.26,"s":100}]"#;
        let mut compressor = Compressor::default();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        compressor.deflate(text, &mut first);
        compressor.deflate(text, &mut second);
        assert_eq!(first, second, "no context kept: the same message, the same bytes");
        assert!(first.len() < text.len());
        let mut inflater = Inflater::new(1 << 16);
        let mut out = Vec::new();
        inflater.handle_read(&client_frame(0xc1, &first), &mut out).unwrap();
        assert_eq!(server_reads(&out), [String::from_utf8(text.to_vec()).unwrap()]);
    }

    #[test]
    fn compressed_fragments_around_a_ping_split_at_every_byte_inflate_as_one_message() {
        let text = "hello, compressed world ".repeat(20);
        let compressed = deflated(text.as_bytes());
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let mut wire = client_frame(0x41, a); // text, RSV1, not final
        wire.extend(client_frame(0x89, b"ping")); // a ping between the fragments
        wire.extend(client_frame(0x80, b)); // the final continuation
        wire.extend(client_frame(0x81, b"plain")); // an uncompressed message after
        for split in 0..wire.len() {
            let mut inflater = Inflater::new(1 << 16);
            let mut out = Vec::new();
            inflater.handle_read(&wire[..split], &mut out).unwrap();
            inflater.handle_read(&wire[split..], &mut out).unwrap();
            let read = server_reads(&out);
            assert_eq!(read.len(), 3, "split at {split}: {read:?}");
            assert!(read[0].starts_with("Ping"), "{read:?}");
            assert_eq!((read[1].as_str(), read[2].as_str()), (text.as_str(), "plain"));
        }
    }

    #[test]
    fn a_deflate_bomb_is_too_big_and_garbage_is_a_protocol_error() {
        let mut bomb = Vec::new();
        Compressor::new(Compression::best(), 15).deflate(&vec![b' '; 10 << 20], &mut bomb);
        assert!(bomb.len() < 64 * 1024, "10 MiB of spaces deflate to {} bytes", bomb.len());
        let mut out = Vec::new();
        let result = Inflater::new(64 * 1024).handle_read(&client_frame(0xc1, &bomb), &mut out);
        assert_eq!(result, Err(InflateError::TooBig));
        let big = client_frame(0xc1, &vec![0; 200 * 1024]);
        assert_eq!(Inflater::new(64 * 1024).handle_read(&big, &mut out), Err(InflateError::TooBig));
        let garbage = client_frame(0xc1, &[0xff; 32]);
        assert_eq!(
            Inflater::new(1 << 16).handle_read(&garbage, &mut out),
            Err(InflateError::Protocol)
        );
        let mut unmasked = client_frame(0xc1, &deflated(b"x"));
        unmasked[1] &= 0x7f;
        assert_eq!(
            Inflater::new(1 << 16).handle_read(&unmasked[..2], &mut out),
            Err(InflateError::Protocol)
        );
    }

    #[test]
    fn uncompressed_frames_pass_through_unchanged() {
        let mut wire = client_frame(0x81, b"{\"action\":\"auth\"}");
        wire.extend(client_frame(0x88, &[0x03, 0xe8]));
        let mut out = Vec::new();
        Inflater::new(1 << 16).handle_read(&wire, &mut out).unwrap();
        assert_eq!(out, wire);
    }
}
