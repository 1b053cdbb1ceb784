//! RTP/RTCP: typed read-only views over packet bytes and RFC 3550 receiver statistics.
