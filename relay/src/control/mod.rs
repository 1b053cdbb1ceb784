//! Control front ends (gRPC sluice.v1, the rtpproxy protocol) over one command core.
pub mod core;
pub mod grpc;
pub mod rtpp;
