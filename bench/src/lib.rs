//! sluice-bench: load tests and side-by-side comparisons of RTP relays.
//!
//! `topo` builds the network-namespace topology the benchmarks and the privileged tests share.
//! The load generator: `rtpp_client` (rtpproxy control protocol over UDP), `payload` (RTP/RTCP
//! packets with a send stamp), `stats` (loss/reordering/latency), `procstat`/`meter` (CPU,
//! memory and fds from /proc), `relay` (starting the relay under test), `scenario::{control,
//! steady}` and `report`.
pub mod charts;
pub mod child;
pub mod clock;
pub mod compare;
pub mod grpc_h2;
pub mod kernel;
pub mod meter;
pub mod ng_client;
pub mod payload;
pub mod pipeline;
pub mod privileged;
pub mod procstat;
pub mod prog_cost;
pub mod relay;
pub mod report;
pub mod rtpengine;
pub mod rtpp_client;
pub mod run;
pub mod scenario;
pub mod signal;
pub mod stats;
pub mod sys;
pub mod testbed;
pub mod topo;
