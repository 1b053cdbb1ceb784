//! Sluice: an RTP media relay with an XDP fast path.
//!
//! The daemon (`sluice`) and the CLI (`sluicectl`) are thin binaries over this library.

pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod metrics;
pub mod ports;
pub mod rtp;
pub mod session;
