//! RTP/RTCP: typed read-only views over packet bytes and RFC 3550 receiver statistics.
//!
//! Everything here is sans-IO: callers hand in datagram payloads and a monotonic arrival time,
//! nothing touches a socket or a clock. The per-packet path never allocates and never panics,
//! whatever bytes arrive, because every byte on it comes straight off the network.
//!
//! Layout: the error type, the RTP view, the RTCP view, first-byte demultiplexing
//! ([`classify`]), the relatch helper ([`seq_within`]), then the receiver statistics
//! ([`RtpStats`]).

use std::iter::FusedIterator;

/// The only RTP/RTCP version in use; versions 0 and 1 predate RFC 1889.
pub const RTP_VERSION: u8 = 2;

/// Length of the fixed RTP header (RFC 3550 5.1).
pub const RTP_FIXED_HEADER_LEN: usize = 12;

/// Why a byte slice is not a valid RTP or RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("packet too short: {len} bytes, need at least {need}")]
    TooShort { len: usize, need: usize },
    #[error("unsupported RTP version {0}, expected 2")]
    BadVersion(u8),
    #[error("CSRC count {count} needs a {need}-byte header but the packet has {len} bytes")]
    BadCsrcCount { count: u8, need: usize, len: usize },
    #[error("header extension does not fit in the packet")]
    BadExtension,
    #[error("padding count {count} does not fit in the {available} bytes after the header")]
    BadPadding { count: u8, available: usize },
    #[error("payload type {0} is not an RTCP packet type (192-223)")]
    NotRtcp(u8),
    #[error("RTCP length field says {declared} bytes but {available} are present")]
    BadLength { declared: usize, available: usize },
}

// ---------------------------------------------------------------------------------------------
// RTP
// ---------------------------------------------------------------------------------------------

/// A validated, zero-copy view of one RTP packet (RFC 3550 5.1).
///
/// All header fields were bounds-checked by [`RtpPacket::parse`], so accessors are infallible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    bytes: &'a [u8],
    fixed: &'a [u8; RTP_FIXED_HEADER_LEN],
    csrcs: &'a [[u8; 4]],
    extension: Option<RtpExtension<'a>>,
    header_len: usize,
    payload: &'a [u8],
    padding_len: u8,
}

/// The RFC 3550 5.3.1 header extension: a profile-defined 16-bit tag and its data.
///
/// The data is left opaque; RFC 8285 element parsing (profile 0xBEDE / 0x100x) is the caller's
/// business since a relay forwards extensions untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpExtension<'a> {
    profile: u16,
    data: &'a [u8],
}

impl<'a> RtpExtension<'a> {
    /// The "defined by profile" field (0xBEDE for RFC 8285 one-byte elements).
    pub fn profile(&self) -> u16 {
        self.profile
    }

    /// Extension data, without the 4-byte extension header; always a multiple of 4 bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

impl<'a> RtpPacket<'a> {
    /// Validates `bytes` as an RTP packet: version 2, the CSRC list, the header extension and
    /// the padding count must all fit inside the slice.
    pub fn parse(bytes: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        let Some((fixed, rest)) = bytes.split_first_chunk::<RTP_FIXED_HEADER_LEN>() else {
            return Err(RtpError::TooShort {
                len: bytes.len(),
                need: RTP_FIXED_HEADER_LEN,
            });
        };
        let version = fixed[0] >> 6;
        if version != RTP_VERSION {
            return Err(RtpError::BadVersion(version));
        }
        let has_padding = fixed[0] & 0x20 != 0;
        let has_extension = fixed[0] & 0x10 != 0;
        let csrc_count = fixed[0] & 0x0f;

        let csrc_len = usize::from(csrc_count) * 4;
        let Some((csrc_bytes, rest)) = rest.split_at_checked(csrc_len) else {
            return Err(RtpError::BadCsrcCount {
                count: csrc_count,
                need: RTP_FIXED_HEADER_LEN + csrc_len,
                len: bytes.len(),
            });
        };
        let (csrcs, _) = csrc_bytes.as_chunks::<4>();

        let (extension, rest) = if has_extension {
            let (ext_header, rest) = rest
                .split_first_chunk::<4>()
                .ok_or(RtpError::BadExtension)?;
            let words = u16::from_be_bytes([ext_header[2], ext_header[3]]);
            let (data, rest) = rest
                .split_at_checked(usize::from(words) * 4)
                .ok_or(RtpError::BadExtension)?;
            let profile = u16::from_be_bytes([ext_header[0], ext_header[1]]);
            (Some(RtpExtension { profile, data }), rest)
        } else {
            (None, rest)
        };
        let header_len = bytes.len() - rest.len();

        let (payload, padding_len) = if has_padding {
            // The count includes itself, so 0 is as invalid as one that reaches into the header.
            let count = rest.last().copied().unwrap_or(0);
            let payload = rest
                .len()
                .checked_sub(usize::from(count))
                .filter(|_| count > 0)
                .and_then(|keep| rest.get(..keep))
                .ok_or(RtpError::BadPadding {
                    count,
                    available: rest.len(),
                })?;
            (payload, count)
        } else {
            (rest, 0)
        };

        Ok(RtpPacket {
            bytes,
            fixed,
            csrcs,
            extension,
            header_len,
            payload,
            padding_len,
        })
    }

    /// Always 2 for a parsed packet.
    pub fn version(&self) -> u8 {
        self.fixed[0] >> 6
    }

    /// The P bit; [`RtpPacket::padding_len`] gives the count.
    pub fn padding(&self) -> bool {
        self.fixed[0] & 0x20 != 0
    }

    /// Number of padding bytes at the end, including the count byte itself (0 without P).
    pub fn padding_len(&self) -> u8 {
        self.padding_len
    }

    /// The X bit.
    pub fn has_extension(&self) -> bool {
        self.extension.is_some()
    }

    pub fn extension(&self) -> Option<RtpExtension<'a>> {
        self.extension
    }

    pub fn marker(&self) -> bool {
        self.fixed[1] & 0x80 != 0
    }

    /// The 7-bit payload type.
    pub fn payload_type(&self) -> u8 {
        self.fixed[1] & 0x7f
    }

    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.fixed[2], self.fixed[3]])
    }

    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.fixed[4], self.fixed[5], self.fixed[6], self.fixed[7]])
    }

    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.fixed[8], self.fixed[9], self.fixed[10], self.fixed[11]])
    }

    pub fn csrc_count(&self) -> usize {
        self.csrcs.len()
    }

    /// The contributing sources, in header order.
    pub fn csrcs(
        &self,
    ) -> impl ExactSizeIterator<Item = u32> + DoubleEndedIterator + Clone + 'a + use<'a> {
        self.csrcs.iter().map(|c| u32::from_be_bytes(*c))
    }

    /// The payload with header, extension and padding stripped.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Fixed header + CSRC list + header extension, in bytes.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The whole packet as received (header, payload and padding).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

// ---------------------------------------------------------------------------------------------
// RTCP
// ---------------------------------------------------------------------------------------------

/// A zero-copy view of an RTCP compound packet (RFC 3550 6.1).
///
/// [`RtcpPacket::parse`] validates only the first packet (version, type range, length and the
/// presence of its SSRC); walk the rest with [`RtcpPacket::packets`], which stops at the first
/// malformed packet instead of failing, since a relay forwards whatever it cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpPacket<'a> {
    bytes: &'a [u8],
    first: RtcpSubpacket<'a>,
    sender_ssrc: u32,
}

impl<'a> RtcpPacket<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<RtcpPacket<'a>, RtpError> {
        // 8 bytes: every packet type a compound may start with carries the sender SSRC.
        let Some((header, _)) = bytes.split_first_chunk::<8>() else {
            return Err(RtpError::TooShort {
                len: bytes.len(),
                need: 8,
            });
        };
        let version = header[0] >> 6;
        if version != RTP_VERSION {
            return Err(RtpError::BadVersion(version));
        }
        let packet_type = header[1];
        if !is_rtcp_packet_type(packet_type) {
            return Err(RtpError::NotRtcp(packet_type));
        }
        let declared = rtcp_len(u16::from_be_bytes([header[2], header[3]]));
        // A zero length word would put the "sender SSRC" in the next packet's header.
        let first = bytes
            .get(..declared)
            .filter(|_| declared >= 8)
            .ok_or(RtpError::BadLength {
                declared,
                available: bytes.len(),
            })?;
        Ok(RtcpPacket {
            bytes,
            first: RtcpSubpacket { bytes: first },
            sender_ssrc: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
        })
    }

    /// Type of the first packet (200 SR, 201 RR, 202 SDES, 203 BYE, 204 APP, 205/206 feedback,
    /// 207 XR).
    pub fn packet_type(&self) -> u8 {
        self.first.packet_type()
    }

    /// SSRC of the sender of the first packet.
    pub fn sender_ssrc(&self) -> u32 {
        self.sender_ssrc
    }

    /// The first packet of the compound.
    pub fn first(&self) -> RtcpSubpacket<'a> {
        self.first
    }

    /// Every packet of the compound, starting with the first.
    pub fn packets(&self) -> RtcpPackets<'a> {
        RtcpPackets { rest: self.bytes }
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// One packet inside an RTCP compound; its length field is known to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpSubpacket<'a> {
    bytes: &'a [u8],
}

impl<'a> RtcpSubpacket<'a> {
    fn header(&self) -> [u8; 4] {
        // The iterator and `parse` only build subpackets of at least 4 bytes.
        self.bytes.first_chunk::<4>().copied().unwrap_or_default()
    }

    pub fn packet_type(&self) -> u8 {
        self.header()[1]
    }

    /// The 5-bit count field (report count, source count or feedback message type).
    pub fn count(&self) -> u8 {
        self.header()[0] & 0x1f
    }

    pub fn padding(&self) -> bool {
        self.header()[0] & 0x20 != 0
    }

    /// Length in bytes, header included (the length field is in 32-bit words minus one).
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The SSRC after the header, absent when the length field is 0 (e.g. an empty BYE).
    pub fn ssrc(&self) -> Option<u32> {
        let (_, rest) = self.bytes.split_first_chunk::<4>()?;
        rest.first_chunk::<4>().map(|s| u32::from_be_bytes(*s))
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Iterator over the packets of an RTCP compound.
///
/// Ends at the end of the data or at the first packet whose version is not 2 or whose length
/// does not fit; [`RtcpPackets::remainder`] is then non-empty.
#[derive(Debug, Clone)]
pub struct RtcpPackets<'a> {
    rest: &'a [u8],
}

impl<'a> RtcpPackets<'a> {
    /// Bytes not yet consumed; non-empty after the iterator ended means malformed trailing data.
    pub fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for RtcpPackets<'a> {
    type Item = RtcpSubpacket<'a>;

    fn next(&mut self) -> Option<RtcpSubpacket<'a>> {
        let header = self.rest.first_chunk::<4>()?;
        if header[0] >> 6 != RTP_VERSION {
            return None;
        }
        let len = rtcp_len(u16::from_be_bytes([header[2], header[3]]));
        let (bytes, rest) = self.rest.split_at_checked(len)?;
        self.rest = rest;
        Some(RtcpSubpacket { bytes })
    }
}

// `next` leaves `rest` untouched when it returns None, so it keeps returning None.
impl FusedIterator for RtcpPackets<'_> {}

fn rtcp_len(length_field: u16) -> usize {
    (usize::from(length_field) + 1) * 4
}

/// RFC 5761 4: RTCP packet types live in 192-223 so they cannot collide with RTP payload types
/// when RTP and RTCP share a port.
fn is_rtcp_packet_type(second_byte: u8) -> bool {
    (192..=223).contains(&second_byte)
}

// ---------------------------------------------------------------------------------------------
// Demultiplexing
// ---------------------------------------------------------------------------------------------

/// What a datagram received on a media port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind<'a> {
    Rtp(RtpPacket<'a>),
    Rtcp(RtcpPacket<'a>),
    Stun,
    Dtls,
    /// Anything else, including RTP/RTCP that fails validation, ZRTP and TURN channel data.
    /// A payload-agnostic relay forwards these, so this is not an error.
    Other,
}

/// Demultiplexes a datagram by its first byte (RFC 7983 7) and, within the RTP range, tells
/// RTCP from RTP by the second byte (RFC 5761 4).
///
/// STUN and DTLS are recognised by the first byte alone; callers that act on them validate
/// further (magic cookie, record header) themselves.
pub fn classify(bytes: &[u8]) -> PacketKind<'_> {
    match bytes {
        [0..=3, ..] => PacketKind::Stun,
        [20..=63, ..] => PacketKind::Dtls,
        [128..=191, second, ..] if is_rtcp_packet_type(*second) => {
            RtcpPacket::parse(bytes).map_or(PacketKind::Other, PacketKind::Rtcp)
        }
        [128..=191, ..] => RtpPacket::parse(bytes).map_or(PacketKind::Other, PacketKind::Rtp),
        _ => PacketKind::Other,
    }
}

/// True when `new` lies within `window` sequence numbers after or before `last`, modulo 2^16
/// (both ends inclusive, so `new == last` is within any window).
///
/// The relay uses it for SSRC continuity when deciding whether to relatch a stream to a new
/// source address: a packet from an unexpected address that continues the current sequence
/// is the same stream after a NAT rebinding, whereas a far-off sequence number is someone
/// else. rtpproxy uses a window of 536.
pub fn seq_within(last: u16, new: u16, window: u16) -> bool {
    new.wrapping_sub(last) <= window || last.wrapping_sub(new) <= window
}

// ---------------------------------------------------------------------------------------------
// Receiver statistics
// ---------------------------------------------------------------------------------------------

/// RFC 3550 A.1: a source is valid after this many packets in sequence.
const MIN_SEQUENTIAL: u8 = 2;
/// RFC 3550 A.1: largest forward jump still taken as loss rather than a restart.
const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: largest backward step still taken as reordering rather than a restart.
const MAX_MISORDER: u16 = 100;
/// Clock rate for payload types with no static assignment and no registered rate.
const DEFAULT_CLOCK_RATE: u32 = 8000;

/// RTP clock rate of a statically assigned payload type (RFC 3551 tables 4 and 5).
///
/// G.722 (PT 9) reports 8000 although it samples at 16 kHz: RFC 3551 4.5.2 fixes its RTP
/// clock at 8000 for historical reasons.
pub const fn static_clock_rate(pt: u8) -> Option<u32> {
    match pt {
        0 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 13 | 15 | 18 => Some(8000),
        6 => Some(16000),
        10 | 11 => Some(44100),
        16 => Some(11025),
        17 => Some(22050),
        14 | 25 | 26 | 28 | 31 | 32 | 33 | 34 => Some(90000),
        _ => None,
    }
}

const fn default_clock_rates() -> [u32; 128] {
    let mut rates = [DEFAULT_CLOCK_RATE; 128];
    let mut pt = 0;
    while pt < rates.len() {
        if let Some(rate) = static_clock_rate(pt as u8) {
            rates[pt] = rate;
        }
        pt += 1;
    }
    rates
}

/// Point-in-time copy of [`RtpStats`].
///
/// `packets`, `bytes`, `out_of_order`, `duplicates` and `ssrc_changes` are cumulative over the
/// life of the stats; the sequence-derived fields (`received`, `expected`, `lost`,
/// `highest_seq_ext`) and the jitter describe the current source only and restart with it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RtpStatsSnapshot {
    /// Every RTP packet passed to `on_packet`.
    pub packets: u64,
    /// Sum of whole packet lengths (the UDP payload).
    pub bytes: u64,
    /// Packets counted by RFC 3550 A.1 since the current sequence started (duplicates count).
    pub received: u64,
    /// Extended highest sequence number - base sequence number + 1 (RFC 3550 A.3).
    pub expected: u64,
    /// `expected - received`; negative when duplicates outnumber losses.
    pub lost: i64,
    pub out_of_order: u64,
    pub duplicates: u64,
    /// How many times the SSRC changed after the first one.
    pub ssrc_changes: u64,
    /// Interarrival jitter in RTP timestamp units, as an RTCP receiver report carries it.
    pub jitter_ts: u32,
    pub jitter_ms: f64,
    /// Cycles << 16 | highest sequence number, truncated to 32 bits like the RTCP field.
    pub highest_seq_ext: u32,
    /// Last SSRC seen; `None` before the first packet.
    pub ssrc: Option<u32>,
    /// Clock rate the jitter is measured in (that of the last packet's payload type).
    pub clock_rate: u32,
}

/// RFC 3550 receiver statistics for one direction of one stream.
///
/// Feed every RTP packet with its arrival time; read the numbers with [`RtpStats::snapshot`].
/// Fixed size, no allocation.
#[derive(Debug, Clone)]
pub struct RtpStats {
    clock_rates: [u32; 128],
    packets: u64,
    bytes: u64,
    out_of_order: u64,
    duplicates: u64,
    ssrc_changes: u64,
    source: Option<Source>,
}

impl Default for RtpStats {
    fn default() -> Self {
        Self::new()
    }
}

impl RtpStats {
    pub fn new() -> RtpStats {
        RtpStats {
            clock_rates: default_clock_rates(),
            packets: 0,
            bytes: 0,
            out_of_order: 0,
            duplicates: 0,
            ssrc_changes: 0,
            source: None,
        }
    }

    /// Registers the clock rate of a dynamic payload type (from SDP `a=rtpmap`), or overrides a
    /// static one. `hz == 0` restores the default. Payload types above 127 are ignored.
    pub fn set_clock_rate(&mut self, pt: u8, hz: u32) {
        if let Some(slot) = self.clock_rates.get_mut(usize::from(pt)) {
            *slot = if hz == 0 {
                static_clock_rate(pt).unwrap_or(DEFAULT_CLOCK_RATE)
            } else {
                hz
            };
        }
    }

    /// The clock rate jitter is computed with for `pt`.
    pub fn clock_rate(&self, pt: u8) -> u32 {
        self.clock_rates
            .get(usize::from(pt))
            .copied()
            .unwrap_or(DEFAULT_CLOCK_RATE)
    }

    /// Accounts one received packet. `arrival_ns` is a monotonic clock in nanoseconds; only
    /// differences between calls matter.
    pub fn on_packet(&mut self, pkt: &RtpPacket<'_>, arrival_ns: u64) {
        self.packets = self.packets.saturating_add(1);
        self.bytes = self.bytes.saturating_add(pkt.as_bytes().len() as u64);
        let rate = self.clock_rate(pkt.payload_type());

        let ssrc = pkt.ssrc();
        let source = match &mut self.source {
            Some(source) if source.ssrc == ssrc => source,
            slot => {
                if slot.is_some() {
                    self.ssrc_changes = self.ssrc_changes.saturating_add(1);
                }
                slot.insert(Source::new(ssrc, pkt.sequence(), rate))
            }
        };

        match source.seq.update(pkt.sequence()) {
            // Either way this packet only becomes the baseline for the next transit difference:
            // a probation packet has no valid predecessor, and after a confirmed jump the
            // previous packet belongs to the old sequence.
            SeqEvent::Probation | SeqEvent::Restarted => {
                source.jitter.rebase(arrival_ns, pkt.timestamp(), rate);
                return;
            }
            SeqEvent::Rejected => return,
            SeqEvent::Validated | SeqEvent::InOrder => {}
            SeqEvent::OutOfOrder => self.out_of_order = self.out_of_order.saturating_add(1),
            SeqEvent::Duplicate => self.duplicates = self.duplicates.saturating_add(1),
        }
        source.jitter.update(arrival_ns, pkt.timestamp(), rate);
    }

    pub fn snapshot(&self) -> RtpStatsSnapshot {
        let mut snap = RtpStatsSnapshot {
            packets: self.packets,
            bytes: self.bytes,
            out_of_order: self.out_of_order,
            duplicates: self.duplicates,
            ssrc_changes: self.ssrc_changes,
            clock_rate: DEFAULT_CLOCK_RATE,
            ..RtpStatsSnapshot::default()
        };
        if let Some(source) = &self.source {
            snap.ssrc = Some(source.ssrc);
            snap.clock_rate = source.jitter.rate;
            snap.jitter_ts = source.jitter.jitter.round() as u32;
            snap.jitter_ms = source.jitter.jitter * 1000.0 / f64::from(source.jitter.rate);
            if source.seq.probation == 0 {
                let extended = source.seq.extended_max();
                let expected = extended
                    .saturating_sub(u64::from(source.seq.base_seq))
                    .saturating_add(1);
                snap.received = source.seq.received;
                snap.expected = expected;
                snap.lost = to_i64(expected).saturating_sub(to_i64(source.seq.received));
                // The RTCP field is 32 bits; it wraps after 2^16 sequence cycles by design.
                snap.highest_seq_ext = extended as u32;
            }
        }
        snap
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone)]
struct Source {
    ssrc: u32,
    seq: SeqState,
    jitter: Jitter,
}

impl Source {
    fn new(ssrc: u32, seq: u16, rate: u32) -> Source {
        Source {
            ssrc,
            seq: SeqState::new_source(seq),
            jitter: Jitter {
                prev: None,
                jitter: 0.0,
                rate,
            },
        }
    }
}

/// Outcome of RFC 3550 A.1 `update_seq` for one packet, refined for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqEvent {
    /// The source is not yet valid; the packet is not counted.
    Probation,
    /// A jump too large to be loss or reordering; ignored unless the next packet follows it.
    Rejected,
    /// The source completed probation; sequence tracking starts at this packet.
    Validated,
    /// Sequence tracking restarted at this packet after a confirmed jump.
    Restarted,
    InOrder,
    OutOfOrder,
    Duplicate,
}

/// RFC 3550 A.1 per-source sequence state.
#[derive(Debug, Clone)]
struct SeqState {
    max_seq: u16,
    /// Number of times the sequence wrapped (A.1 keeps it pre-shifted by 16; this does not, so
    /// a u64 never overflows).
    cycles: u64,
    base_seq: u16,
    /// Sequence number that would confirm a jump; A.1 encodes "none" as RTP_SEQ_MOD + 1.
    bad_seq: Option<u16>,
    probation: u8,
    received: u64,
    /// Bit `i` set: `max_seq - i` was received. Only consulted for packets up to
    /// MAX_MISORDER behind, so 128 bits cover it; this is what tells a duplicate from a late
    /// packet without a per-packet allocation.
    seen: u128,
}

impl SeqState {
    fn new_source(seq: u16) -> SeqState {
        let mut state = SeqState {
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: None,
            probation: MIN_SEQUENTIAL,
            received: 0,
            seen: 0,
        };
        state.init(seq);
        // So that `seq` itself is the first in-sequence packet of the probation.
        state.max_seq = seq.wrapping_sub(1);
        state
    }

    fn init(&mut self, seq: u16) {
        self.base_seq = seq;
        self.max_seq = seq;
        self.bad_seq = None;
        self.cycles = 0;
        self.received = 0;
        self.seen = 1;
    }

    fn extended_max(&self) -> u64 {
        (self.cycles << 16) | u64::from(self.max_seq)
    }

    fn update(&mut self, seq: u16) -> SeqEvent {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init(seq);
                    self.received = 1;
                    return SeqEvent::Validated;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SeqEvent::Probation;
        }

        let event = if udelta == 0 {
            // A.1 lets this through as in-order; it is a repeat of the highest packet.
            SeqEvent::Duplicate
        } else if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.saturating_add(1);
            }
            self.max_seq = seq;
            self.seen = self.seen.checked_shl(u32::from(udelta)).unwrap_or(0) | 1;
            SeqEvent::InOrder
        } else if udelta <= MAX_MISORDER.wrapping_neg() {
            // 65536 - MAX_MISORDER: anything from here to the top is a small step backwards.
            if Some(seq) == self.bad_seq {
                // Two sequential packets after a jump: the sender restarted (A.1).
                self.init(seq);
                self.received = 1;
                return SeqEvent::Restarted;
            }
            self.bad_seq = Some(seq.wrapping_add(1));
            return SeqEvent::Rejected;
        } else {
            let behind = self.max_seq.wrapping_sub(seq);
            let bit = 1u128.checked_shl(u32::from(behind)).unwrap_or(0);
            if self.seen & bit != 0 {
                SeqEvent::Duplicate
            } else {
                self.seen |= bit;
                SeqEvent::OutOfOrder
            }
        };
        self.received = self.received.saturating_add(1);
        event
    }
}

/// RFC 3550 6.4.1 / A.8 interarrival jitter.
#[derive(Debug, Clone)]
struct Jitter {
    /// Arrival time and RTP timestamp of the previous packet.
    prev: Option<(u64, u32)>,
    /// In RTP timestamp units of `rate`.
    jitter: f64,
    rate: u32,
}

impl Jitter {
    /// Makes the next difference start from this packet, keeping the current estimate.
    fn rebase(&mut self, arrival_ns: u64, ts: u32, rate: u32) {
        self.rescale(rate);
        self.prev = Some((arrival_ns, ts));
    }

    fn update(&mut self, arrival_ns: u64, ts: u32, rate: u32) {
        if rate != self.rate {
            // Timestamps in different units cannot be differenced; start over from here.
            self.rebase(arrival_ns, ts, rate);
            return;
        }
        if let Some((prev_arrival, prev_ts)) = self.prev {
            // D = (Rj - Ri) - (Sj - Si), the difference of the two transit times. The arrival
            // part is taken in nanoseconds and scaled in f64 rather than converting each arrival
            // to timestamp units, which would quantise it; the timestamp part wraps as the
            // 32-bit field does, so a timestamp wrap is a small difference, not 2^32 (A.8).
            let arrival_delta_ns = arrival_ns.wrapping_sub(prev_arrival) as i64;
            let arrival_delta = arrival_delta_ns as f64 * f64::from(rate) / 1e9;
            let ts_delta = f64::from(ts.wrapping_sub(prev_ts) as i32);
            let d = (arrival_delta - ts_delta).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.prev = Some((arrival_ns, ts));
    }

    /// Keeps the estimate meaningful when the payload type switches to another clock rate.
    fn rescale(&mut self, rate: u32) {
        if rate != self.rate {
            self.jitter = self.jitter * f64::from(rate) / f64::from(self.rate);
            self.rate = rate;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Test-only RTP serializer.
    #[derive(Debug, Clone, Default)]
    struct Build<'b> {
        pt: u8,
        seq: u16,
        ts: u32,
        ssrc: u32,
        marker: bool,
        csrcs: &'b [u32],
        ext: Option<(u16, &'b [u8])>,
        payload: &'b [u8],
        pad: u8,
    }

    impl Build<'_> {
        fn bytes(&self) -> Vec<u8> {
            assert!(self.csrcs.len() <= 15);
            let mut out = vec![
                0x80 | (u8::from(self.pad > 0) << 5)
                    | (u8::from(self.ext.is_some()) << 4)
                    | self.csrcs.len() as u8,
                (u8::from(self.marker) << 7) | (self.pt & 0x7f),
            ];
            out.extend_from_slice(&self.seq.to_be_bytes());
            out.extend_from_slice(&self.ts.to_be_bytes());
            out.extend_from_slice(&self.ssrc.to_be_bytes());
            for c in self.csrcs {
                out.extend_from_slice(&c.to_be_bytes());
            }
            if let Some((profile, data)) = self.ext {
                assert_eq!(data.len() % 4, 0);
                out.extend_from_slice(&profile.to_be_bytes());
                out.extend_from_slice(&((data.len() / 4) as u16).to_be_bytes());
                out.extend_from_slice(data);
            }
            out.extend_from_slice(self.payload);
            if self.pad > 0 {
                out.extend(std::iter::repeat_n(0, usize::from(self.pad) - 1));
                out.push(self.pad);
            }
            out
        }
    }

    fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        Build {
            pt,
            seq,
            ts,
            ssrc,
            payload: &[0xaa; 160],
            ..Build::default()
        }
        .bytes()
    }

    // ----- RTP view -----

    #[test]
    fn minimal_header() {
        let bytes = Build {
            pt: 8,
            seq: 0x1234,
            ts: 0xdead_beef,
            ssrc: 0x0102_0304,
            marker: true,
            ..Build::default()
        }
        .bytes();
        assert_eq!(bytes.len(), 12);
        let p = RtpPacket::parse(&bytes).unwrap();
        assert_eq!(p.version(), 2);
        assert!(!p.padding());
        assert!(p.marker());
        assert_eq!(p.payload_type(), 8);
        assert_eq!(p.sequence(), 0x1234);
        assert_eq!(p.timestamp(), 0xdead_beef);
        assert_eq!(p.ssrc(), 0x0102_0304);
        assert_eq!(p.csrcs().count(), 0);
        assert!(p.extension().is_none());
        assert_eq!(p.header_len(), 12);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn csrcs_extension_and_padding() {
        let csrcs = [1, 0xffff_ffff, 42];
        let ext_data = [9u8; 8];
        let bytes = Build {
            pt: 96,
            csrcs: &csrcs,
            ext: Some((0xbede, &ext_data)),
            payload: b"hello",
            pad: 3,
            ..Build::default()
        }
        .bytes();
        let p = RtpPacket::parse(&bytes).unwrap();
        assert_eq!(p.csrcs().collect::<Vec<_>>(), csrcs);
        assert_eq!(p.csrc_count(), 3);
        let ext = p.extension().unwrap();
        assert_eq!(ext.profile(), 0xbede);
        assert_eq!(ext.data(), &ext_data);
        assert_eq!(p.header_len(), 12 + 12 + 4 + 8);
        assert!(p.padding());
        assert_eq!(p.padding_len(), 3);
        assert_eq!(p.payload(), b"hello");
        assert_eq!(p.as_bytes().len(), bytes.len());
    }

    #[test]
    fn bad_version() {
        let mut bytes = rtp(0, 1, 2, 3);
        bytes[0] = (bytes[0] & 0x3f) | 0x40;
        assert_eq!(RtpPacket::parse(&bytes), Err(RtpError::BadVersion(1)));
    }

    #[test]
    fn truncation_never_panics_and_header_prefixes_fail() {
        let csrcs = [7, 8];
        let bytes = Build {
            csrcs: &csrcs,
            ext: Some((0x1000, &[1, 2, 3, 4])),
            payload: b"payload",
            ..Build::default()
        }
        .bytes();
        let header_len = RtpPacket::parse(&bytes).unwrap().header_len();
        for len in 0..header_len {
            assert!(RtpPacket::parse(&bytes[..len]).is_err(), "len {len}");
        }
        for len in header_len..=bytes.len() {
            let p = RtpPacket::parse(&bytes[..len]).unwrap();
            assert_eq!(p.payload(), &b"payload"[..len - header_len]);
        }
        // Each kind of shortfall maps to its own error.
        assert!(matches!(
            RtpPacket::parse(&bytes[..11]),
            Err(RtpError::TooShort { .. })
        ));
        assert!(matches!(
            RtpPacket::parse(&bytes[..19]),
            Err(RtpError::BadCsrcCount { count: 2, .. })
        ));
        assert_eq!(RtpPacket::parse(&bytes[..22]), Err(RtpError::BadExtension));
        assert_eq!(RtpPacket::parse(&bytes[..26]), Err(RtpError::BadExtension));
    }

    #[test]
    fn padded_packet_truncation_never_panics() {
        let bytes = Build {
            payload: b"abc",
            pad: 4,
            ..Build::default()
        }
        .bytes();
        for len in 0..=bytes.len() {
            let _ = RtpPacket::parse(&bytes[..len]);
        }
    }

    #[test]
    fn bad_padding() {
        let mut bytes = Build {
            payload: b"abc",
            pad: 2,
            ..Build::default()
        }
        .bytes();
        let last = bytes.len() - 1;
        // Count exactly covering the payload area is fine (empty payload)...
        bytes[last] = 5;
        assert_eq!(RtpPacket::parse(&bytes).unwrap().payload(), b"");
        // ...one more reaches into the header.
        bytes[last] = 6;
        assert_eq!(
            RtpPacket::parse(&bytes),
            Err(RtpError::BadPadding {
                count: 6,
                available: 5
            })
        );
        bytes[last] = 0;
        assert!(matches!(
            RtpPacket::parse(&bytes),
            Err(RtpError::BadPadding { count: 0, .. })
        ));
        // P set with nothing after the header at all.
        let mut bare = rtp(0, 0, 0, 0);
        bare.truncate(12);
        bare[0] |= 0x20;
        assert!(matches!(
            RtpPacket::parse(&bare),
            Err(RtpError::BadPadding { .. })
        ));
    }

    // ----- RTCP view -----

    fn rtcp_sr(ssrc: u32) -> Vec<u8> {
        let mut b = vec![0x80, 200, 0, 6];
        b.extend_from_slice(&ssrc.to_be_bytes());
        b.extend_from_slice(&[0; 20]);
        b
    }

    fn rtcp_sdes(ssrc: u32) -> Vec<u8> {
        // One chunk: SSRC, CNAME "ab", end, padding to a word boundary.
        let mut b = vec![0x81, 202, 0, 3];
        b.extend_from_slice(&ssrc.to_be_bytes());
        b.extend_from_slice(&[1, 2, b'a', b'b', 0, 0, 0, 0]);
        b
    }

    #[test]
    fn rtcp_compound() {
        let mut bytes = rtcp_sr(0xabcd);
        bytes.extend(rtcp_sdes(0xabcd));
        bytes.extend([0x80, 203, 0, 0]); // BYE with no sources
        let p = RtcpPacket::parse(&bytes).unwrap();
        assert_eq!(p.packet_type(), 200);
        assert_eq!(p.sender_ssrc(), 0xabcd);
        assert_eq!(p.first().len_bytes(), 28);
        let parts: Vec<_> = p.packets().collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].packet_type(), 202);
        assert_eq!(parts[1].count(), 1);
        assert_eq!(parts[1].len_bytes(), 16);
        assert_eq!(parts[1].ssrc(), Some(0xabcd));
        assert_eq!(parts[2].packet_type(), 203);
        assert_eq!(parts[2].ssrc(), None);
        let mut it = p.packets();
        it.by_ref().for_each(drop);
        assert!(it.remainder().is_empty());
    }

    #[test]
    fn rtcp_iterator_stops_at_malformed_data() {
        let mut bytes = rtcp_sr(1);
        bytes.extend([0x80, 201, 0, 9, 0, 0]); // claims 40 bytes, has 6
        let p = RtcpPacket::parse(&bytes).unwrap();
        let mut it = p.packets();
        assert_eq!(it.next().map(|s| s.packet_type()), Some(200));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
        assert_eq!(it.remainder().len(), 6);

        let mut bytes = rtcp_sr(1);
        bytes.extend([0x40, 201, 0, 1, 0, 0, 0, 0]); // version 1
        assert_eq!(RtcpPacket::parse(&bytes).unwrap().packets().count(), 1);
    }

    #[test]
    fn rtcp_parse_errors() {
        assert!(matches!(
            RtcpPacket::parse(&[0x80, 200, 0]),
            Err(RtpError::TooShort { .. })
        ));
        let mut sr = rtcp_sr(1);
        sr[0] = 0xc0;
        assert_eq!(RtcpPacket::parse(&sr), Err(RtpError::BadVersion(3)));
        assert_eq!(
            RtcpPacket::parse(&rtp(0, 0, 0, 0)),
            Err(RtpError::NotRtcp(0))
        );
        let sr = rtcp_sr(1);
        assert_eq!(
            RtcpPacket::parse(&sr[..27]),
            Err(RtpError::BadLength {
                declared: 28,
                available: 27
            })
        );
        assert!(matches!(
            RtcpPacket::parse(&[0x80, 203, 0, 0, 0x80, 201, 0, 1, 0, 0, 0, 0]),
            Err(RtpError::BadLength { declared: 4, .. })
        ));
        for len in 0..sr.len() {
            assert!(RtcpPacket::parse(&sr[..len]).is_err());
        }
    }

    // ----- classify -----

    #[test]
    fn classify_demux() {
        let stun = [
            0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        assert_eq!(classify(&stun), PacketKind::Stun);
        assert_eq!(classify(&[22, 0xfe, 0xfd, 0, 0]), PacketKind::Dtls);
        assert_eq!(classify(&[20]), PacketKind::Dtls);
        assert_eq!(classify(&[63, 0]), PacketKind::Dtls);

        let sr = rtcp_sr(77);
        match classify(&sr) {
            PacketKind::Rtcp(p) => {
                assert_eq!(p.packet_type(), 200);
                assert_eq!(p.sender_ssrc(), 77);
            }
            other => panic!("expected RTCP, got {other:?}"),
        }
        for pt in [0, 8, 96] {
            let bytes = rtp(pt, 5, 6, 7);
            match classify(&bytes) {
                PacketKind::Rtp(p) => assert_eq!(p.payload_type(), pt),
                other => panic!("expected RTP PT {pt}, got {other:?}"),
            }
        }
        // Marker + PT 96 puts 0xe0 in the second byte, still below the RTCP range.
        let bytes = Build {
            pt: 96,
            marker: true,
            ..Build::default()
        }
        .bytes();
        assert!(matches!(classify(&bytes), PacketKind::Rtp(_)));

        assert_eq!(classify(&[]), PacketKind::Other);
        assert_eq!(classify(&[0xff, 0xff, 0xff]), PacketKind::Other);
        assert_eq!(classify(&[0x40; 40]), PacketKind::Other);
        assert_eq!(classify(&[16, 0, 0, 0]), PacketKind::Other); // ZRTP range
        assert_eq!(classify(&[0x80]), PacketKind::Other);
        assert_eq!(classify(&[0x80, 0, 1]), PacketKind::Other); // truncated RTP
        assert_eq!(classify(&[0x80, 200, 0, 6, 0]), PacketKind::Other); // truncated RTCP
    }

    #[test]
    fn seq_within_window() {
        assert!(seq_within(100, 100, 0));
        assert!(seq_within(100, 636, 536));
        assert!(!seq_within(100, 637, 536));
        assert!(seq_within(65500, 300, 536));
        assert!(seq_within(300, 65500, 536));
        assert!(!seq_within(0, 32768, 536));
        assert!(seq_within(0, 32768, u16::MAX));
    }

    // ----- statistics -----

    const MS: u64 = 1_000_000;
    const SSRC: u32 = 0x5151;

    fn feed(stats: &mut RtpStats, pt: u8, seq: u16, ts: u32, ssrc: u32, arrival_ns: u64) {
        let bytes = rtp(pt, seq, ts, ssrc);
        stats.on_packet(&RtpPacket::parse(&bytes).unwrap(), arrival_ns);
    }

    /// Feeds `seqs` as a 20 ms / 160-sample PCMU stream, timestamps and arrivals following
    /// the sequence numbers as a sender would have sent them.
    fn feed_seqs(stats: &mut RtpStats, seqs: impl IntoIterator<Item = u16>) {
        for seq in seqs {
            let ts = u32::from(seq).wrapping_mul(160);
            feed(
                stats,
                0,
                seq,
                ts,
                SSRC,
                1_000 * MS + u64::from(seq) * 20 * MS,
            );
        }
    }

    #[test]
    fn in_order_stream() {
        let mut s = RtpStats::new();
        feed_seqs(&mut s, 1000..1100);
        let snap = s.snapshot();
        assert_eq!(snap.packets, 100);
        assert_eq!(snap.bytes, 100 * 172);
        assert_eq!(snap.lost, 0);
        assert_eq!(snap.out_of_order, 0);
        assert_eq!(snap.duplicates, 0);
        assert_eq!(snap.expected, snap.received);
        assert_eq!(snap.highest_seq_ext, 1099);
        assert_eq!(snap.ssrc, Some(SSRC));
        assert_eq!(snap.jitter_ts, 0);
    }

    #[test]
    fn empty_stats() {
        let snap = RtpStats::default().snapshot();
        assert_eq!(snap.packets, 0);
        assert_eq!(snap.ssrc, None);
        assert_eq!(snap.expected, 0);
        assert_eq!(snap.clock_rate, 8000);
    }

    #[test]
    fn gap_is_loss() {
        let mut s = RtpStats::new();
        feed_seqs(&mut s, (0..10).chain(13..20));
        let snap = s.snapshot();
        assert_eq!(snap.lost, 3);
        assert_eq!(snap.expected - snap.received, 3);
        assert_eq!(snap.out_of_order, 0);
    }

    #[test]
    fn reordering_is_not_loss() {
        let mut s = RtpStats::new();
        feed_seqs(&mut s, 0..10);
        feed_seqs(&mut s, [11, 12]);
        assert_eq!(s.snapshot().lost, 1);
        feed_seqs(&mut s, [10, 13, 15, 14, 16]);
        let snap = s.snapshot();
        assert_eq!(snap.lost, 0);
        assert_eq!(snap.out_of_order, 2);
        assert_eq!(snap.duplicates, 0);
        assert_eq!(snap.highest_seq_ext, 16);
    }

    #[test]
    fn wrap_keeps_extended_seq_increasing() {
        let mut s = RtpStats::new();
        let mut last = 0;
        for seq in (65500..=65535).chain(0..50) {
            feed_seqs(&mut s, [seq]);
            let snap = s.snapshot();
            assert!(snap.highest_seq_ext >= last);
            last = snap.highest_seq_ext;
        }
        let snap = s.snapshot();
        assert_eq!(snap.highest_seq_ext, 65536 + 49);
        assert_eq!(snap.lost, 0);
        // A late packet from before the wrap is reordering, not a new cycle.
        feed_seqs(&mut s, [65535]);
        let snap = s.snapshot();
        assert_eq!(snap.highest_seq_ext, 65536 + 49);
        assert_eq!(snap.duplicates, 1);
    }

    #[test]
    fn big_jump_resyncs_after_two_sequential_packets() {
        let mut s = RtpStats::new();
        feed_seqs(&mut s, 100..=110);
        let before = s.snapshot();
        assert_eq!(before.expected, 10);

        // One packet far ahead is ignored (could be a stray)...
        feed_seqs(&mut s, [20_000]);
        let snap = s.snapshot();
        assert_eq!(snap.highest_seq_ext, 110);
        assert_eq!(snap.expected, before.expected);
        assert_eq!(snap.received, before.received);
        assert_eq!(snap.packets, 12);

        // ...and the old sequence carries on unharmed.
        feed_seqs(&mut s, [111]);
        assert_eq!(s.snapshot().highest_seq_ext, 111);
        assert_eq!(s.snapshot().lost, 0);

        // Two sequential packets after the jump: the sender restarted, tracking follows.
        feed_seqs(&mut s, [30_000, 30_001]);
        let snap = s.snapshot();
        assert_eq!(snap.highest_seq_ext, 30_001);
        assert_eq!(snap.expected, 1);
        assert_eq!(snap.received, 1);
        feed_seqs(&mut s, 30_002..30_010);
        let snap = s.snapshot();
        assert_eq!(snap.highest_seq_ext, 30_009);
        assert_eq!(snap.lost, 0);
        assert_eq!(snap.packets, 11 + 1 + 1 + 2 + 8);
    }

    #[test]
    fn jump_backwards_beyond_misorder_is_rejected() {
        let mut s = RtpStats::new();
        feed_seqs(&mut s, 1000..1010);
        feed_seqs(&mut s, [800]);
        let snap = s.snapshot();
        assert_eq!(snap.highest_seq_ext, 1009);
        assert_eq!(snap.out_of_order, 0);
        assert_eq!(snap.lost, 0);
    }

    #[test]
    fn duplicates() {
        let mut s = RtpStats::new();
        feed_seqs(&mut s, 0..10);
        feed_seqs(&mut s, [9, 5]);
        let snap = s.snapshot();
        assert_eq!(snap.duplicates, 2);
        assert_eq!(snap.out_of_order, 0);
        // A.1 counts duplicates as received, which drives A.3 loss negative.
        assert_eq!(snap.lost, -2);
        // A packet never seen inside the window is reordering, and only once.
        feed_seqs(&mut s, [11, 10, 10]);
        let snap = s.snapshot();
        assert_eq!(snap.out_of_order, 1);
        assert_eq!(snap.duplicates, 3);
    }

    #[test]
    fn ssrc_change_restarts_tracking() {
        let mut s = RtpStats::new();
        feed_seqs(&mut s, (100..=110).chain(112..=115));
        assert_eq!(s.snapshot().lost, 1);
        for seq in 5000..=5005 {
            feed(
                &mut s,
                0,
                seq,
                0,
                0xbbbb,
                5_000 * MS + u64::from(seq) * 20 * MS,
            );
        }
        let snap = s.snapshot();
        assert_eq!(snap.ssrc, Some(0xbbbb));
        assert_eq!(snap.ssrc_changes, 1);
        assert_eq!(snap.packets, 15 + 6);
        assert_eq!(snap.highest_seq_ext, 5005);
        assert_eq!(snap.expected, 5);
        assert_eq!(snap.lost, 0);
    }

    #[test]
    fn constant_spacing_has_no_jitter() {
        let mut s = RtpStats::new();
        for i in 0..200u16 {
            let ts = 0xffff_0000u32.wrapping_add(u32::from(i) * 160); // wraps mid-stream
            feed(&mut s, 0, i, ts, SSRC, u64::from(i) * 20 * MS);
        }
        let snap = s.snapshot();
        assert_eq!(snap.jitter_ts, 0);
        assert!(snap.jitter_ms.abs() < 1e-9);
    }

    /// Feeds `n` packets at `rate` Hz, 20 ms apart on the sender clock, arriving alternately
    /// 5 ms late and 5 ms early; returns the RFC 3550 jitter in timestamp units, computed here
    /// from the same inputs by iterating the formula.
    fn feed_alternating(s: &mut RtpStats, pt: u8, rate: u64, n: u16) -> f64 {
        let step = rate / 50;
        let mut arrivals = Vec::new();
        for i in 0..n {
            let ts = (u64::from(i) * step) as u32;
            let nominal = 1_000 * MS + u64::from(i) * 20 * MS;
            let arrival = if i % 2 == 0 {
                nominal + 5 * MS
            } else {
                nominal - 5 * MS
            };
            feed(s, pt, i, ts, SSRC, arrival);
            arrivals.push((arrival, ts));
        }
        // The formula, iterated by hand over consecutive packets.
        let mut j = 0.0f64;
        for pair in arrivals.windows(2) {
            let (r0, s0) = pair[0];
            let (r1, s1) = pair[1];
            let transit0 = r0 as f64 * rate as f64 / 1e9 - f64::from(s0);
            let transit1 = r1 as f64 * rate as f64 / 1e9 - f64::from(s1);
            let d = transit1 - transit0;
            j += (d.abs() - j) / 16.0;
        }
        j
    }

    #[test]
    fn alternating_arrivals_converge_to_formula() {
        let mut s = RtpStats::new();
        let expected = feed_alternating(&mut s, 0, 8000, 400);
        let snap = s.snapshot();
        // |D| is always 10 ms = 80 samples at 8 kHz, so J converges on 80.
        assert!((expected - 80.0).abs() < 1e-6);
        assert_eq!(snap.jitter_ts, 80);
        assert!(
            (snap.jitter_ms - expected / 8.0).abs() < 1e-6,
            "{}",
            snap.jitter_ms
        );
        assert!((snap.jitter_ms - 10.0).abs() < 1e-6);
    }

    #[test]
    fn jitter_tracks_formula_early() {
        // Few packets: the estimate is still climbing, so every update counts. The first
        // difference is taken at the second packet, as in RFC 3550.
        let mut s = RtpStats::new();
        let expected = feed_alternating(&mut s, 0, 8000, 6);
        let mut j = 0.0f64;
        for _ in 0..5 {
            j += (80.0 - j) / 16.0;
        }
        assert!((expected - j).abs() < 1e-9);
        assert!((s.snapshot().jitter_ts as f64 - j.round()).abs() < 1e-9);
        assert!((s.snapshot().jitter_ms - j / 8.0).abs() < 1e-9);
    }

    #[test]
    fn g722_clock_is_8000() {
        assert_eq!(RtpStats::new().clock_rate(9), 8000);
        let mut s = RtpStats::new();
        // 160 timestamp units per 20 ms: zero jitter only if PT 9 runs at 8 kHz.
        for i in 0..100u16 {
            feed(
                &mut s,
                9,
                i,
                u32::from(i) * 160,
                SSRC,
                u64::from(i) * 20 * MS,
            );
        }
        let snap = s.snapshot();
        assert_eq!(snap.clock_rate, 8000);
        assert_eq!(snap.jitter_ts, 0);
    }

    #[test]
    fn static_rates() {
        let s = RtpStats::new();
        for (pt, rate) in [
            (0, 8000),
            (6, 16000),
            (10, 44100),
            (11, 44100),
            (14, 90000),
            (16, 11025),
            (17, 22050),
            (18, 8000),
            (26, 90000),
            (34, 90000),
            (35, 8000),
            (96, 8000),
            (127, 8000),
            (200, 8000),
        ] {
            assert_eq!(s.clock_rate(pt), rate, "pt {pt}");
        }
    }

    #[test]
    fn dynamic_pt_uses_registered_rate() {
        let run = |s: &mut RtpStats| {
            // Opus: 960 timestamp units per 20 ms at 48 kHz.
            for i in 0..100u16 {
                feed(s, 111, i, u32::from(i) * 960, SSRC, u64::from(i) * 20 * MS);
            }
            s.snapshot()
        };
        let unregistered = run(&mut RtpStats::new());
        assert_eq!(unregistered.clock_rate, 8000);
        assert!(unregistered.jitter_ts > 0);

        let mut s = RtpStats::new();
        s.set_clock_rate(111, 48000);
        assert_eq!(s.clock_rate(111), 48000);
        let snap = run(&mut s);
        assert_eq!(snap.clock_rate, 48000);
        assert_eq!(snap.jitter_ts, 0);

        s.set_clock_rate(111, 0);
        assert_eq!(s.clock_rate(111), 8000);
        s.set_clock_rate(200, 1); // out of range: ignored
    }

    #[test]
    fn alternating_jitter_at_dynamic_rate() {
        let mut s = RtpStats::new();
        s.set_clock_rate(96, 48000);
        let expected = feed_alternating(&mut s, 96, 48000, 400);
        let snap = s.snapshot();
        assert!((f64::from(snap.jitter_ts) - expected.round()).abs() < 1e-9);
        assert!((snap.jitter_ms - 10.0).abs() < 1e-6);
    }

    // ----- properties -----

    fn build_strategy() -> impl Strategy<Value = (u8, u16, u32, u32, bool, Vec<u32>)> {
        (
            0u8..128,
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            prop::collection::vec(any::<u32>(), 0..=15),
        )
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(p) = RtpPacket::parse(&bytes) {
                prop_assert!(p.header_len() + p.payload().len() + usize::from(p.padding_len())
                    == bytes.len());
                prop_assert_eq!(p.csrcs().count(), p.csrc_count());
                let mut s = RtpStats::new();
                s.on_packet(&p, 0);
            }
            if let Ok(p) = RtcpPacket::parse(&bytes) {
                let mut it = p.packets();
                let total: usize = it.by_ref().map(|s| {
                    let _ = (s.packet_type(), s.count(), s.padding(), s.ssrc());
                    s.len_bytes()
                }).sum();
                prop_assert_eq!(total + it.remainder().len(), bytes.len());
            }
            let _ = classify(&bytes);
        }

        #[test]
        fn rtp_like_bytes_never_panic(
            b0 in 0x80u8..0xc0,
            b1 in any::<u8>(),
            rest in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = vec![b0, b1];
            bytes.extend(rest);
            let kind = classify(&bytes);
            match kind {
                PacketKind::Rtp(p) => prop_assert!(!is_rtcp_packet_type(bytes[1]) && p.version() == 2),
                PacketKind::Rtcp(_) => prop_assert!(is_rtcp_packet_type(bytes[1])),
                PacketKind::Other => {}
                PacketKind::Stun | PacketKind::Dtls => prop_assert!(false, "wrong range"),
            }
        }

        #[test]
        fn stats_never_panic(
            steps in prop::collection::vec(
                (0u32..3, -300i32..300, any::<bool>(), any::<u32>(), any::<u8>(), any::<u64>(), 0u64..100_000_000),
                0..300,
            ),
        ) {
            let mut s = RtpStats::new();
            s.set_clock_rate(96, 48000);
            let mut seq = 0u16;
            let mut arrival = 0u64;
            for (ssrc, step, random_seq, ts, pt, wild_arrival, delta) in steps {
                seq = if random_seq { ts as u16 } else { seq.wrapping_add(step as u16) };
                arrival = if pt > 250 { wild_arrival } else { arrival.wrapping_add(delta) };
                let bytes = Build { pt: pt & 0x7f, seq, ts, ssrc, ..Build::default() }.bytes();
                let p = RtpPacket::parse(&bytes).unwrap();
                s.on_packet(&p, arrival);
                let snap = s.snapshot();
                prop_assert_eq!(snap.lost, snap.expected as i64 - snap.received as i64);
                prop_assert!(snap.jitter_ms.is_finite() && snap.jitter_ms >= 0.0);
                prop_assert!(snap.received <= snap.packets);
            }
        }

        #[test]
        fn stats_on_arbitrary_packets_never_panic(
            packets in prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 12..40), any::<u64>()), 0..100),
        ) {
            let mut s = RtpStats::new();
            for (mut bytes, arrival) in packets {
                bytes[0] = (bytes[0] & 0x3f) | 0x80;
                if let Ok(p) = RtpPacket::parse(&bytes) {
                    s.on_packet(&p, arrival);
                }
            }
            let _ = s.snapshot();
        }

        #[test]
        fn header_round_trip((pt, seq, ts, ssrc, marker, csrcs) in build_strategy(),
                             payload in prop::collection::vec(any::<u8>(), 0..32),
                             pad in 0u8..8) {
            let bytes = Build {
                pt, seq, ts, ssrc, marker, csrcs: &csrcs, payload: &payload, pad,
                ..Build::default()
            }.bytes();
            let p = RtpPacket::parse(&bytes).unwrap();
            prop_assert_eq!(p.version(), 2);
            prop_assert_eq!(p.payload_type(), pt);
            prop_assert_eq!(p.sequence(), seq);
            prop_assert_eq!(p.timestamp(), ts);
            prop_assert_eq!(p.ssrc(), ssrc);
            prop_assert_eq!(p.marker(), marker);
            prop_assert_eq!(p.csrcs().collect::<Vec<_>>(), csrcs.clone());
            prop_assert_eq!(p.header_len(), 12 + 4 * csrcs.len());
            prop_assert_eq!(p.payload(), &payload[..]);
            prop_assert_eq!(p.padding_len(), pad);
            prop_assert_eq!(p.padding(), pad > 0);
            // STUN/DTLS never, and RTP unless marker + PT 64..=95 collides with RTCP.
            let collides = marker && (64..=95).contains(&pt);
            prop_assert_eq!(matches!(classify(&bytes), PacketKind::Rtp(_)), !collides);
        }
    }
}
