//! sluice-bench: load tests and side-by-side comparisons of RTP relays.
//!
//! `topo` builds the network-namespace topology the benchmarks and the privileged tests share.
pub mod privileged;
pub mod topo;
