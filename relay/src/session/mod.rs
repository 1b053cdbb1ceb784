//! Sans-IO session core: sessions, streams and legs, latching rules, timers. No sockets here:
//! the table decides, and hands the IO shell [`Action`]s to carry out.
pub mod latch;
pub mod offload;
pub mod stats;
pub mod table;
pub mod timer;

pub use offload::{Component, FlowSpec};
pub use table::{
    Action, CoreError, EndReason, InterfaceSel, LegInfo, LegOpener, LegOptions, LegUpdate, Notify,
    SessionEvent, SessionFilter, SessionInfo, SessionOptions, SessionState, StreamId, Table,
    TableConfig, UpdateKind, UpdateReply, UpdateRequest,
};
