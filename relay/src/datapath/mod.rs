//! Packet forwarding: the XDP fast path (kernel) and, later, the userspace workers.
pub mod xdp;
