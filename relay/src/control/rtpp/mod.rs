//! rtpproxy control protocol front end: `proto` parses and encodes the wire format (sans-IO),
//! `rcache` remembers replies so retransmitted commands are not executed twice, `handler` runs
//! commands against the command core, `server` holds the listeners and the timeout notifier.
pub mod handler;
pub mod proto;
pub mod rcache;
pub mod server;
