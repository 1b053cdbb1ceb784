//! Latching (symmetric RTP / NAT learning) and RTP Bleed protection, per leg and per component
//! (RTP and RTCP latch independently).
//!
//! The first acceptable packet fixes the leg's remote address to the packet's real source.
//! After that, packets from any other source are dropped unless the relatch policy allows the
//! move: a recent offer/answer for the leg (`on-update`), or a packet that continues the latched
//! RTP stream (same SSRC, sequence number close to the last one: `ssrc-continuity`), which is how
//! a NAT rebinding mid-call looks, and which an RTP Bleed attacker cannot produce without seeing
//! the stream.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// How the first packets are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LatchMode {
    /// Latch to the source of the first packet (symmetric RTP, works behind NAT).
    #[default]
    FirstPacket,
    /// Accept only the address the SDP announced; never learn another.
    Strict,
    /// Do not latch: always send to the SDP address; accept packets from the SDP host on any
    /// port (rtpproxy's `a` modifier, for endpoints that send from another port).
    Asymmetric,
}

/// When a latched leg may move to a new source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Relatch {
    /// A new offer/answer for the leg reopens latching for the relatch window.
    #[default]
    OnUpdate,
    /// As `on-update`, and also a new source carrying the latched SSRC with a nearby sequence
    /// number (a NAT rebinding).
    SsrcContinuity,
    /// Only a changed SDP address moves the leg.
    Never,
}

/// Sequence distance accepted by `ssrc-continuity`, as rtpproxy uses (src/rtpp_stream.c).
pub const SSRC_CONTINUITY_WINDOW: u16 = 536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatchPolicy {
    pub mode: LatchMode,
    pub relatch: Relatch,
    /// How long `on-update` keeps latching open after an update, in nanoseconds.
    pub window_ns: u64,
}

impl Default for LatchPolicy {
    fn default() -> Self {
        LatchPolicy {
            mode: LatchMode::FirstPacket,
            relatch: Relatch::OnUpdate,
            window_ns: 10_000_000_000,
        }
    }
}

/// What the packet carried that latching cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Rtp {
        ssrc: u32,
        seq: u16,
    },
    /// RTCP, STUN, DTLS or anything else: latches like RTP, but no SSRC rules apply.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it. `learned` is set when this packet (re)latched the leg to its source.
    Accept {
        learned: Option<Learned>,
    },
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// First latch of this leg/component.
    Latched,
    /// Moved from an earlier latched address.
    Relatched,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A latched leg got a packet from another source (an RTP Bleed attempt, or a move the
    /// policy does not allow).
    SourceMismatch,
    /// RTP with SSRC 0 never latches.
    SsrcZero,
    /// `strict` / `asymmetric`: the source is not the SDP address (host).
    NotSdpAddress,
}

#[derive(Debug, Clone)]
pub struct Latch {
    policy: LatchPolicy,
    sdp: Option<SocketAddr>,
    latched: Option<SocketAddr>,
    /// Latching is open (again) until this time, in caller nanoseconds.
    open_until_ns: u64,
    last_ssrc: Option<u32>,
    last_seq: u16,
}

impl Latch {
    pub fn new(policy: LatchPolicy, sdp: Option<SocketAddr>) -> Latch {
        Latch {
            policy,
            sdp,
            latched: None,
            open_until_ns: 0,
            last_ssrc: None,
            last_seq: 0,
        }
    }

    pub fn policy(&self) -> LatchPolicy {
        self.policy
    }

    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched
    }

    pub fn sdp(&self) -> Option<SocketAddr> {
        self.sdp
    }

    /// Where to send packets for this leg: the learned address, else the SDP address.
    pub fn destination(&self) -> Option<SocketAddr> {
        match self.policy.mode {
            LatchMode::Asymmetric => self.sdp,
            _ => self.latched.or(self.sdp),
        }
    }

    /// A new offer/answer for the leg. A different SDP address is a real move (re-INVITE):
    /// forget the latch. The same address reopens latching for the window under `on-update` /
    /// `ssrc-continuity` (the endpoint may be re-sending from a new NAT binding).
    pub fn update(&mut self, policy: LatchPolicy, sdp: Option<SocketAddr>, now_ns: u64) {
        let moved = sdp != self.sdp;
        self.policy = policy;
        self.sdp = sdp;
        if moved {
            self.latched = None;
            self.last_ssrc = None;
        }
        // Only a latched leg needs reopening; an unlatched one learns from its next packet
        // anyway, and an open window on a fresh call would let anyone take it over.
        if policy.relatch != Relatch::Never && self.latched.is_some() {
            self.open_until_ns = now_ns.saturating_add(policy.window_ns);
        }
    }

    pub fn on_packet(&mut self, src: SocketAddr, content: Content, now_ns: u64) -> Verdict {
        let verdict = self.decide(src, content, now_ns);
        if let (Verdict::Accept { .. }, Content::Rtp { ssrc, seq }) = (verdict, content) {
            self.last_ssrc = Some(ssrc);
            self.last_seq = seq;
        }
        verdict
    }

    fn decide(&mut self, src: SocketAddr, content: Content, now_ns: u64) -> Verdict {
        match self.policy.mode {
            LatchMode::Asymmetric => {
                return match self.sdp {
                    Some(sdp) if sdp.ip() == src.ip() => Verdict::Accept { learned: None },
                    _ => Verdict::Drop(DropReason::NotSdpAddress),
                };
            }
            LatchMode::Strict => {
                if self.sdp != Some(src) {
                    return Verdict::Drop(DropReason::NotSdpAddress);
                }
                return self.learn(src, content);
            }
            LatchMode::FirstPacket => {}
        }
        match self.latched {
            None => self.learn(src, content),
            Some(addr) if addr == src => Verdict::Accept { learned: None },
            Some(_) if now_ns < self.open_until_ns => self.learn(src, content),
            Some(_) if self.continues_stream(content) => self.learn(src, content),
            Some(_) => Verdict::Drop(DropReason::SourceMismatch),
        }
    }

    fn continues_stream(&self, content: Content) -> bool {
        match (self.policy.relatch, content, self.last_ssrc) {
            (Relatch::SsrcContinuity, Content::Rtp { ssrc, seq }, Some(last)) => {
                // Strictly ahead: replaying an already-seen packet from elsewhere must not
                // move the leg.
                let ahead = seq.wrapping_sub(self.last_seq);
                ssrc == last && (1..=SSRC_CONTINUITY_WINDOW).contains(&ahead)
            }
            _ => false,
        }
    }

    fn learn(&mut self, src: SocketAddr, content: Content) -> Verdict {
        if matches!(content, Content::Rtp { ssrc: 0, .. }) {
            return Verdict::Drop(DropReason::SsrcZero);
        }
        let learned = match self.latched {
            None => Some(Learned::Latched),
            Some(old) if old != src => Some(Learned::Relatched),
            Some(_) => None,
        };
        if learned.is_some() {
            // One move per update: the window closes once the leg has followed it.
            self.open_until_ns = 0;
        }
        self.latched = Some(src);
        Verdict::Accept { learned }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rtp(ssrc: u32, seq: u16) -> Content {
        Content::Rtp { ssrc, seq }
    }

    fn policy(relatch: Relatch) -> LatchPolicy {
        LatchPolicy {
            relatch,
            ..LatchPolicy::default()
        }
    }

    const LATCHED: Verdict = Verdict::Accept {
        learned: Some(Learned::Latched),
    };
    const RELATCHED: Verdict = Verdict::Accept {
        learned: Some(Learned::Relatched),
    };
    const PASS: Verdict = Verdict::Accept { learned: None };
    const BLEED: Verdict = Verdict::Drop(DropReason::SourceMismatch);

    #[test]
    fn sends_to_sdp_until_latched_then_to_real_source() {
        let mut l = Latch::new(policy(Relatch::Never), Some(addr("10.0.0.1:4000")));
        assert_eq!(l.destination(), Some(addr("10.0.0.1:4000")));
        // Behind NAT: the packet comes from the public mapping, not the SDP address.
        assert_eq!(l.on_packet(addr("198.18.1.2:61000"), rtp(7, 1), 0), LATCHED);
        assert_eq!(l.destination(), Some(addr("198.18.1.2:61000")));
        assert_eq!(l.on_packet(addr("198.18.1.2:61000"), rtp(7, 2), 1), PASS);
    }

    #[test]
    fn other_sources_are_dropped_after_latching() {
        let mut l = Latch::new(policy(Relatch::OnUpdate), None);
        assert_eq!(l.on_packet(addr("198.18.1.2:5000"), rtp(7, 1), 0), LATCHED);
        assert_eq!(l.on_packet(addr("198.18.9.9:5000"), rtp(7, 2), 1), BLEED);
        assert_eq!(
            l.on_packet(addr("198.18.1.2:5001"), Content::Other, 2),
            BLEED
        );
        assert_eq!(l.latched(), Some(addr("198.18.1.2:5000")));
    }

    #[test]
    fn ssrc_zero_never_latches() {
        let mut l = Latch::new(LatchPolicy::default(), None);
        let src = addr("198.18.1.2:5000");
        assert_eq!(
            l.on_packet(src, rtp(0, 1), 0),
            Verdict::Drop(DropReason::SsrcZero)
        );
        assert_eq!(l.latched(), None);
        assert_eq!(l.on_packet(src, rtp(5, 2), 0), LATCHED);
    }

    #[test]
    fn update_opens_a_relatch_window() {
        let mut l = Latch::new(policy(Relatch::OnUpdate), Some(addr("10.0.0.1:4000")));
        assert_eq!(l.on_packet(addr("198.18.1.2:5000"), rtp(1, 1), 0), LATCHED);
        l.update(
            policy(Relatch::OnUpdate),
            Some(addr("10.0.0.1:4000")),
            100 * SEC,
        );
        assert_eq!(
            l.latched(),
            Some(addr("198.18.1.2:5000")),
            "same SDP keeps the latch"
        );
        assert_eq!(
            l.on_packet(addr("198.18.1.2:6000"), rtp(1, 2), 105 * SEC),
            RELATCHED
        );
        assert_eq!(
            l.on_packet(addr("198.18.9.9:6000"), rtp(1, 3), 106 * SEC),
            BLEED,
            "one move per update"
        );
        l.update(
            policy(Relatch::OnUpdate),
            Some(addr("10.0.0.1:4000")),
            200 * SEC,
        );
        assert_eq!(
            l.on_packet(addr("198.18.1.2:7000"), rtp(1, 3), 210 * SEC),
            BLEED,
            "window closed"
        );
    }

    #[test]
    fn initial_offer_answer_does_not_open_a_window() {
        let mut l = Latch::new(policy(Relatch::OnUpdate), None);
        l.update(policy(Relatch::OnUpdate), Some(addr("10.0.0.1:4000")), 0);
        assert_eq!(
            l.on_packet(addr("198.18.1.2:5000"), rtp(1, 1), SEC),
            LATCHED
        );
        assert_eq!(
            l.on_packet(addr("198.18.6.6:5000"), rtp(9, 1), 2 * SEC),
            BLEED
        );
    }

    #[test]
    fn never_ignores_updates_with_the_same_address() {
        let mut l = Latch::new(policy(Relatch::Never), Some(addr("10.0.0.1:4000")));
        l.on_packet(addr("198.18.1.2:5000"), rtp(1, 1), 0);
        l.update(policy(Relatch::Never), Some(addr("10.0.0.1:4000")), SEC);
        assert_eq!(l.on_packet(addr("198.18.1.2:6000"), rtp(1, 2), SEC), BLEED);
    }

    #[test]
    fn new_sdp_address_resets_the_latch() {
        let mut l = Latch::new(policy(Relatch::Never), Some(addr("10.0.0.1:4000")));
        l.on_packet(addr("198.18.1.2:5000"), rtp(1, 1), 0);
        l.update(policy(Relatch::Never), Some(addr("10.0.0.2:4002")), SEC);
        assert_eq!(l.latched(), None);
        assert_eq!(l.destination(), Some(addr("10.0.0.2:4002")));
        assert_eq!(
            l.on_packet(addr("198.18.1.3:5002"), rtp(9, 1), 2 * SEC),
            LATCHED
        );
    }

    #[test]
    fn ssrc_continuity_follows_a_nat_rebinding_but_not_a_bleed() {
        let mut l = Latch::new(policy(Relatch::SsrcContinuity), None);
        let first = addr("198.18.1.2:5000");
        let rebound = addr("198.18.1.2:5999");
        let attacker = addr("198.18.7.7:5000");
        for seq in 100..110 {
            assert_ne!(l.on_packet(first, rtp(0xabc, seq), u64::from(seq)), BLEED);
        }
        // Wrong SSRC, or right SSRC far off in sequence: an attacker guessing.
        assert_eq!(l.on_packet(attacker, rtp(0x123, 110), 200), BLEED);
        assert_eq!(l.on_packet(attacker, rtp(0xabc, 30000), 200), BLEED);
        // The same stream continuing from a new NAT mapping.
        assert_eq!(l.on_packet(rebound, rtp(0xabc, 111), 300), RELATCHED);
        assert_eq!(l.destination(), Some(rebound));
        // Replaying a packet already seen (captured from the stream) does not move it back.
        assert_eq!(l.on_packet(first, rtp(0xabc, 111), 400), BLEED, "replay");
        assert_eq!(
            l.on_packet(attacker, rtp(0xabc, 100), 400),
            BLEED,
            "old packet"
        );
    }

    #[test]
    fn ssrc_continuity_handles_sequence_wrap() {
        let mut l = Latch::new(policy(Relatch::SsrcContinuity), None);
        l.on_packet(addr("198.18.1.2:5000"), rtp(1, 65530), 0);
        assert_eq!(
            l.on_packet(addr("198.18.1.2:5002"), rtp(1, 3), 1),
            RELATCHED
        );
    }

    #[test]
    fn on_update_policy_does_not_use_ssrc_continuity() {
        let mut l = Latch::new(policy(Relatch::OnUpdate), None);
        l.on_packet(addr("198.18.1.2:5000"), rtp(1, 1), 0);
        assert_eq!(l.on_packet(addr("198.18.1.2:5002"), rtp(1, 2), 1), BLEED);
    }

    #[test]
    fn strict_accepts_only_the_sdp_address() {
        let p = LatchPolicy {
            mode: LatchMode::Strict,
            ..LatchPolicy::default()
        };
        let sdp = addr("198.18.1.2:4000");
        let mut l = Latch::new(p, Some(sdp));
        let not_sdp = Verdict::Drop(DropReason::NotSdpAddress);
        assert_eq!(l.on_packet(addr("198.18.1.2:4001"), rtp(1, 1), 0), not_sdp);
        assert_eq!(l.on_packet(sdp, rtp(1, 2), 0), LATCHED);
        let mut hold = Latch::new(p, None);
        assert_eq!(hold.on_packet(sdp, rtp(1, 1), 0), not_sdp);
    }

    #[test]
    fn asymmetric_checks_host_only_and_sends_to_sdp() {
        let p = LatchPolicy {
            mode: LatchMode::Asymmetric,
            ..LatchPolicy::default()
        };
        let sdp = addr("198.18.1.2:4000");
        let mut l = Latch::new(p, Some(sdp));
        assert_eq!(l.on_packet(addr("198.18.1.2:9999"), rtp(1, 1), 0), PASS);
        assert_eq!(l.destination(), Some(sdp));
        assert_eq!(
            l.on_packet(addr("198.18.1.3:4000"), rtp(1, 2), 0),
            Verdict::Drop(DropReason::NotSdpAddress)
        );
    }
}
