//! Reply cache for retransmitted rtpproxy commands (sans-IO).
