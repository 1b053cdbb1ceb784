//! A minimal unary gRPC client straight on `h2`, for load generation.
//!
//! The harness shares the machine with the relay it measures, so every microsecond the client
//! spends per call is taken from the relay. tonic's `Channel` costs about 29 us of client CPU
//! per offer/answer/delete cycle here (a `tower::Buffer` hop and a body task per request); this
//! client frames the protobuf itself (RFC-style gRPC over HTTP/2: 5-byte length prefix,
//! `grpc-status` in the trailers) and sends it on a cloned `h2::client::SendRequest`. It speaks
//! only what the control scenario needs: unary calls, no compression, no deadlines.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request};

/// The status of a failed call: gRPC code (`tonic::Code` numbering) or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("gRPC status {0:?}")]
    Status(tonic::Code),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("bad response: {0}")]
    Protocol(&'static str),
}

impl CallError {
    /// Short name for error tallies (`NotFound`, `Unavailable`, `h2`, ...).
    pub fn label(&self) -> String {
        match self {
            CallError::Status(code) => format!("{code:?}"),
            CallError::H2(_) => "h2".to_owned(),
            CallError::Protocol(_) => "protocol".to_owned(),
        }
    }
}

/// One HTTP/2 connection; clones share it (each call is its own stream).
#[derive(Clone)]
pub struct H2Grpc {
    send: SendRequest<Bytes>,
    authority: String,
}

impl H2Grpc {
    /// Connects and spawns the connection task on the current tokio runtime.
    pub async fn connect(addr: SocketAddr) -> io::Result<H2Grpc> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, connection) = h2::client::handshake(tcp).await.map_err(io::Error::other)?;
        tokio::spawn(async move {
            // Ends when every SendRequest is dropped or the server closes.
            let _ = connection.await;
        });
        Ok(H2Grpc {
            send,
            authority: addr.to_string(),
        })
    }

    /// Calls `path` (e.g. `/sluice.v1.Relay/Offer`) with `req`.
    pub async fn call<Q: prost::Message, R: prost::Message + Default>(
        &self,
        path: &str,
        req: &Q,
    ) -> Result<R, CallError> {
        let len = req.encoded_len();
        let mut body = BytesMut::with_capacity(5 + len);
        body.put_u8(0);
        body.put_u32(u32::try_from(len).map_err(|_| CallError::Protocol("request too large"))?);
        req.encode(&mut body)
            .map_err(|_| CallError::Protocol("encode"))?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|_| CallError::Protocol("request"))?;
        let mut send = self.send.clone().ready().await?;
        let (response, mut stream) = send.send_request(request, false)?;
        stream.send_data(body.freeze(), true)?;
        let response = response.await?;
        // Trailers-only responses (errors) carry the status in the headers.
        if let Some(code) = status(response.headers())
            && code != tonic::Code::Ok
        {
            return Err(CallError::Status(code));
        }
        let mut body = response.into_body();
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await?;
        match trailers.as_ref().and_then(status) {
            Some(tonic::Code::Ok) => {}
            Some(code) => return Err(CallError::Status(code)),
            None => return Err(CallError::Protocol("no grpc-status")),
        }
        let mut data = data.freeze();
        if data.len() < 5 || data[0] != 0 {
            return Err(CallError::Protocol("message framing"));
        }
        data.advance(1);
        let n = data.get_u32() as usize;
        if data.len() != n {
            return Err(CallError::Protocol("message length"));
        }
        R::decode(data).map_err(|_| CallError::Protocol("decode"))
    }
}

fn status(headers: &HeaderMap) -> Option<tonic::Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_comes_from_the_grpc_status_header() {
        let mut h = HeaderMap::new();
        assert_eq!(status(&h), None);
        h.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(status(&h), Some(tonic::Code::NotFound));
        h.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(status(&h), None);
        assert_eq!(CallError::Status(tonic::Code::NotFound).label(), "NotFound");
    }
}
