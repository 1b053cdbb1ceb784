//! Packet forwarding: userspace workers (`user`) and the XDP fast path (`xdp`).
pub mod user;
pub mod xdp;
