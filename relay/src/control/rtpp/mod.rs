//! rtpproxy control protocol front end: `proto` parses and encodes the wire format (sans-IO),
//! `rcache` remembers replies so retransmitted commands are not executed twice.
pub mod proto;
pub mod rcache;
