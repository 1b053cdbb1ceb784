//! Control front ends. The gRPC service (sluice.v1) lives in `grpc`.
pub mod grpc;
