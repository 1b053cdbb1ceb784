//! Control front ends: gRPC (sluice.v1) and the rtpproxy protocol.
pub mod grpc;
pub mod rtpp;
