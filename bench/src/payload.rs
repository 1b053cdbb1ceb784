//! RTP/RTCP packets the load generator sends, and the stamp carried in their payload.
//!
//! Every RTP packet is a 12-byte RTP header (V=2, PT 0 = PCMU, one SSRC per direction) and a
//! 160-byte payload (20 ms of G.711 at 8 kHz). The payload starts with a [`Stamp`]: a magic, the
//! stream the packet belongs to (call index * 2 + direction), a 64-bit sequence number (the RTP
//! one wraps after 65536 packets) and the send time in nanoseconds since the run's epoch
//! (CLOCK_MONOTONIC, see [`crate::clock`]). The relay must not touch the payload, so the receiver
//! can attribute each packet, spot cross-talk between calls and measure one-way latency.
//! The rest of the payload is PCMU silence (0xFF).

/// RTP fixed header length.
pub const RTP_HEADER_LEN: usize = 12;
/// Payload bytes per packet: 20 ms of PCMU.
pub const PAYLOAD_LEN: usize = 160;
/// Whole datagram.
pub const PACKET_LEN: usize = RTP_HEADER_LEN + PAYLOAD_LEN;
/// RTP timestamp increment per packet (8 kHz x 20 ms).
pub const TS_STEP: u32 = 160;
/// PCMU.
pub const PAYLOAD_TYPE: u8 = 0;
/// Marks a payload written by this generator ("SLBn").
pub const MAGIC: [u8; 4] = *b"SLBn";
/// Encoded stamp length: magic 4 + stream 4 + seq 8 + sent_ns 8.
pub const STAMP_LEN: usize = 24;
/// An RTCP sender report without report blocks.
pub const RTCP_SR_LEN: usize = 28;

/// What the generator writes at the start of each payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// call index * 2 + direction (0 = caller -> callee, 1 = callee -> caller).
    pub stream: u32,
    /// Per-stream packet number, from 0.
    pub seq: u64,
    /// Send time, ns since the run's epoch.
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp into `payload[..STAMP_LEN]`.
    pub fn encode(&self, payload: &mut [u8]) {
        payload[0..4].copy_from_slice(&MAGIC);
        payload[4..8].copy_from_slice(&self.stream.to_be_bytes());
        payload[8..16].copy_from_slice(&self.seq.to_be_bytes());
        payload[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a stamp from the start of a payload; `None` when it is too short or not ours.
    pub fn decode(payload: &[u8]) -> Option<Stamp> {
        if payload.len() < STAMP_LEN || payload[0..4] != MAGIC {
            return None;
        }
        Some(Stamp {
            stream: u32::from_be_bytes(payload[4..8].try_into().ok()?),
            seq: u64::from_be_bytes(payload[8..16].try_into().ok()?),
            sent_ns: u64::from_be_bytes(payload[16..24].try_into().ok()?),
        })
    }
}

/// A reusable RTP packet buffer for one stream: the constant parts are written once, each
/// [`RtpPacket::next`] only rewrites sequence, timestamp and stamp.
#[derive(Clone)]
pub struct RtpPacket {
    pub buf: [u8; PACKET_LEN],
    stream: u32,
    seq: u64,
    rtp_seq: u16,
    rtp_ts: u32,
}

impl RtpPacket {
    /// `initial_rtp_seq` and `initial_ts` should be random-ish per stream, as real senders do.
    pub fn new(stream: u32, ssrc: u32, initial_rtp_seq: u16, initial_ts: u32) -> RtpPacket {
        let mut buf = [0xFF_u8; PACKET_LEN];
        buf[0] = 0x80; // V=2, no padding, no extension, no CSRC
        buf[1] = PAYLOAD_TYPE; // no marker
        buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
        RtpPacket {
            buf,
            stream,
            seq: 0,
            rtp_seq: initial_rtp_seq,
            rtp_ts: initial_ts,
        }
    }

    /// Packets produced so far.
    pub fn count(&self) -> u64 {
        self.seq
    }

    /// Fills in the next packet, stamped with `now_ns`, and returns it.
    pub fn next(&mut self, now_ns: u64) -> &[u8] {
        self.buf[1] = PAYLOAD_TYPE | if self.seq == 0 { 0x80 } else { 0 };
        self.buf[2..4].copy_from_slice(&self.rtp_seq.to_be_bytes());
        self.buf[4..8].copy_from_slice(&self.rtp_ts.to_be_bytes());
        Stamp {
            stream: self.stream,
            seq: self.seq,
            sent_ns: now_ns,
        }
        .encode(&mut self.buf[RTP_HEADER_LEN..]);
        self.seq += 1;
        self.rtp_seq = self.rtp_seq.wrapping_add(1);
        self.rtp_ts = self.rtp_ts.wrapping_add(TS_STEP);
        &self.buf
    }

    /// Takes back the last packet produced (its send failed).
    pub fn undo(&mut self) {
        if self.seq > 0 {
            self.seq -= 1;
            self.rtp_seq = self.rtp_seq.wrapping_sub(1);
            self.rtp_ts = self.rtp_ts.wrapping_sub(TS_STEP);
        }
    }

    /// The RTP sequence number and timestamp the next packet will carry.
    pub fn rtp_position(&self) -> (u16, u32) {
        (self.rtp_seq, self.rtp_ts)
    }
}

/// Parses the RTP header fields the receiver checks: (payload type, seq, timestamp, ssrc).
pub fn rtp_header(packet: &[u8]) -> Option<(u8, u16, u32, u32)> {
    if packet.len() < RTP_HEADER_LEN || packet[0] >> 6 != 2 {
        return None;
    }
    Some((
        packet[1] & 0x7F,
        u16::from_be_bytes([packet[2], packet[3]]),
        u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
    ))
}

/// The RTP payload after a fixed header (no CSRC/extension: the generator sends none).
pub fn rtp_payload(packet: &[u8]) -> &[u8] {
    packet.get(RTP_HEADER_LEN..).unwrap_or(&[])
}

/// An RTCP sender report (RFC 3550 6.4.1) without report blocks. The NTP timestamp carries
/// `now_ns` (the receiver only counts RTCP, it does not measure its latency).
pub fn rtcp_sr(
    ssrc: u32,
    now_ns: u64,
    rtp_ts: u32,
    packets: u32,
    octets: u32,
) -> [u8; RTCP_SR_LEN] {
    let mut p = [0u8; RTCP_SR_LEN];
    p[0] = 0x80; // V=2, RC=0
    p[1] = 200; // SR
    p[2..4].copy_from_slice(&((RTCP_SR_LEN / 4 - 1) as u16).to_be_bytes());
    p[4..8].copy_from_slice(&ssrc.to_be_bytes());
    p[8..16].copy_from_slice(&now_ns.to_be_bytes());
    p[16..20].copy_from_slice(&rtp_ts.to_be_bytes());
    p[20..24].copy_from_slice(&packets.to_be_bytes());
    p[24..28].copy_from_slice(&octets.to_be_bytes());
    p
}

/// True for an RTCP sender report as built by [`rtcp_sr`].
pub fn is_rtcp_sr(packet: &[u8]) -> bool {
    packet.len() >= RTCP_SR_LEN && packet[0] >> 6 == 2 && packet[1] == 200
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip() {
        let s = Stamp {
            stream: 1999,
            seq: 0x0102_0304_0506_0708,
            sent_ns: u64::MAX - 5,
        };
        let mut buf = [0u8; PAYLOAD_LEN];
        s.encode(&mut buf);
        assert_eq!(Stamp::decode(&buf), Some(s));
        assert_eq!(&buf[0..4], b"SLBn");
        // Big-endian layout, byte for byte.
        assert_eq!(&buf[4..8], &1999u32.to_be_bytes());
        assert_eq!(&buf[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn stamp_rejects_foreign_or_short_payloads() {
        assert_eq!(Stamp::decode(&[0u8; 10]), None);
        assert_eq!(Stamp::decode(&[0xFFu8; PAYLOAD_LEN]), None);
        let mut buf = [0u8; STAMP_LEN];
        Stamp {
            stream: 1,
            seq: 2,
            sent_ns: 3,
        }
        .encode(&mut buf);
        assert!(Stamp::decode(&buf).is_some());
        assert!(Stamp::decode(&buf[..STAMP_LEN - 1]).is_none());
    }

    #[test]
    fn rtp_packets_increment_seq_and_timestamp() {
        let mut p = RtpPacket::new(7, 0xDEAD_BEEF, 65535, 4_294_967_200);
        let first = p.next(100).to_vec();
        assert_eq!(first.len(), PACKET_LEN);
        assert_eq!(
            rtp_header(&first),
            Some((0, 65535, 4_294_967_200, 0xDEAD_BEEF))
        );
        assert_eq!(first[1] & 0x80, 0x80, "marker on the first packet");
        let second = p.next(200).to_vec();
        // Both wrap.
        assert_eq!(
            rtp_header(&second),
            Some((0, 0, 4_294_967_200u32.wrapping_add(160), 0xDEAD_BEEF))
        );
        assert_eq!(second[1] & 0x80, 0);
        let stamp = Stamp::decode(rtp_payload(&second)).unwrap();
        assert_eq!(
            stamp,
            Stamp {
                stream: 7,
                seq: 1,
                sent_ns: 200
            }
        );
        assert_eq!(p.count(), 2);
        assert!(
            second[RTP_HEADER_LEN + STAMP_LEN..]
                .iter()
                .all(|&b| b == 0xFF)
        );
    }

    #[test]
    fn rtcp_sender_report_shape() {
        let p = rtcp_sr(42, 1, 2, 3, 4);
        assert!(is_rtcp_sr(&p));
        assert_eq!(p[0], 0x80);
        assert_eq!(
            u16::from_be_bytes([p[2], p[3]]),
            6,
            "length in 32-bit words minus one"
        );
        assert_eq!(u32::from_be_bytes([p[4], p[5], p[6], p[7]]), 42);
        assert!(rtp_header(&p[..4]).is_none());
    }
}
