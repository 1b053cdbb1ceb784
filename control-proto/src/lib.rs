//! sluice.v1 control-plane types and tonic bindings, generated from
//! `proto/sluice/v1/relay.proto`.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("sluice.v1");

    /// Encoded `FileDescriptorSet` of sluice.v1, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sluice_v1_descriptor.bin"));
}
