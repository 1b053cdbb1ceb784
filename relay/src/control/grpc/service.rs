//! The sluice.v1 `Relay` service: maps requests onto the command core.

use std::time::Instant;

use sluice_proto::v1::relay_server::Relay;
use sluice_proto::v1::{GetInfoRequest, GetInfoResponse};
use tonic::{Request, Response, Status};

use crate::metrics::VERSION;

pub struct RelayService {
    started: Instant,
}

impl RelayService {
    pub fn new(started: Instant) -> RelayService {
        RelayService { started }
    }
}

#[tonic::async_trait]
impl Relay for RelayService {
    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        Ok(Response::new(GetInfoResponse {
            version: VERSION.to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
        }))
    }
}
