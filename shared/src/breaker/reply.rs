//! The reply while the breaker rejects: the route's fallback, its state and when to retry.

use super::config::Fallback;
use super::record::State;
use super::{CIRCUIT_STATE_HEADER, RETRY_AFTER_HEADER};
use crate::filter::LocalReply;
use crate::host::RequestHost;

impl Fallback {
    /// The fallback for this request, in gRPC form for a gRPC call
    /// ([`LocalReply::for_request`]).
    pub fn reply(
        &self,
        state: State,
        retry_after_secs: u64,
        host: &impl RequestHost,
    ) -> LocalReply {
        let mut headers = Vec::with_capacity(self.headers.len() + 3);
        headers.extend(self.headers.iter().cloned());
        headers.push((CIRCUIT_STATE_HEADER.to_owned(), state.as_str().to_owned()));
        headers.push((RETRY_AFTER_HEADER.to_owned(), retry_after_secs.to_string()));
        let http = LocalReply {
            status: self.status,
            headers,
            body: self.body.clone(),
            grpc: None,
        };
        http.for_request(
            host,
            &self.grpc,
            Some(retry_after_secs.saturating_mul(1000)),
        )
    }
}
