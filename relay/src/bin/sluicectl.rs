//! `sluicectl`: command-line client for the relay's gRPC control plane (sluice.v1).
//!
//! Table output is for people; JSON output (`--output json`) is for scripts: one JSON document
//! per command (one object per line for `watch`), field names as in the .proto, enum values
//! as short lowercase strings, addresses as `ip:port` strings, absent values as null.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};
use sluice_proto::v1 as pb;
use sluice_proto::v1::relay_client::RelayClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Sessions fetched per ListSessions call.
const PAGE_SIZE: u32 = 500;
/// Bound on pages fetched by `sessions list` (500 x 10,000 sessions is far beyond any relay).
const MAX_PAGES: usize = 10_000;

#[derive(Parser)]
#[command(
    name = "sluicectl",
    version,
    about = "Inspect and control a Sluice relay"
)]
struct Cli {
    /// gRPC endpoint of the relay.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        env = "SLUICE_ENDPOINT"
    )]
    endpoint: String,
    /// Output format: a table for people, JSON for scripts.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Bearer token for a relay with `grpc.token` / `grpc.token_file` set.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) that signed the relay's TLS certificate; implies TLS.
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a relay that requires one (mTLS); with --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Name to verify the relay's certificate against (default: the endpoint's host).
    #[arg(long, value_name = "NAME")]
    tls_name: Option<String>,
    /// Seconds to wait for the connection and for each request (not for `watch` events).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Version and uptime of the relay.
    Info,
    /// grpc.health.v1 status; exits non-zero unless SERVING.
    Health,
    /// List, show and delete sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Relay-wide counters and port-pool usage.
    Stats,
    /// Print session events as they happen, until interrupted.
    Watch {
        /// Only events of this call-id.
        #[arg(long)]
        call_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Every session (all pages), in call-id order.
    List {
        /// Only sessions in this state.
        #[arg(long, value_enum)]
        state: Option<State>,
        /// Only sessions with this label (KEY=VALUE); repeat to require several.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// One session with its streams, legs, addresses and counters.
    Show { call_id: String },
    /// Delete a whole call, or the streams of one dialog (tags) or one m-line (index).
    Delete {
        call_id: String,
        #[arg(long)]
        from_tag: Option<String>,
        #[arg(long)]
        to_tag: Option<String>,
        /// SDP m-line number, 1-based.
        #[arg(long)]
        index: Option<u32>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum State {
    Offered,
    Answered,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluicectl: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluicectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How to reach the relay: endpoint, transport security, credentials.
struct ConnectOptions {
    endpoint: String,
    timeout: Duration,
    token: Option<String>,
    ca: Option<std::path::PathBuf>,
    identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    tls_name: Option<String>,
}

/// An open connection and the clients over it.
struct Connection {
    channel: Channel,
    timeout: Duration,
    auth: Auth,
}

/// Adds `authorization: Bearer TOKEN` to every call when a token is given.
#[derive(Clone)]
struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Connection {
    async fn open(options: &ConnectOptions) -> anyhow::Result<Connection> {
        let mut endpoint = Endpoint::from_shared(options.endpoint.clone())
            .with_context(|| format!("invalid endpoint `{}`", options.endpoint))?
            .connect_timeout(options.timeout);
        if options.ca.is_some() || options.endpoint.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            if let Some(ca) = &options.ca {
                let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &options.identity {
                let cert =
                    std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
                let key =
                    std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            if let Some(name) = &options.tls_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls).context("TLS configuration")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", options.endpoint))?;
        let auth = match &options.token {
            Some(token) => Auth(Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| anyhow!("the token must be printable ASCII"))?,
            )),
            None => Auth(None),
        };
        Ok(Connection {
            channel,
            timeout: options.timeout,
            auth,
        })
    }

    fn relay(&self) -> RelayClient<tonic::service::interceptor::InterceptedService<Channel, Auth>> {
        RelayClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// Runs one unary call with the request timeout; gRPC errors read "CODE: message".
    async fn unary<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status_error(&status)),
            Err(_) => Err(anyhow!(
                "no answer within {} s (--timeout)",
                self.timeout.as_secs()
            )),
        }
    }
}

fn status_error(status: &tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", status.code(), status.message())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&ConnectOptions {
        endpoint: cli.endpoint.clone(),
        timeout: Duration::from_secs(cli.timeout),
        token: cli.token.clone(),
        ca: cli.ca.clone(),
        identity: cli.cert.clone().zip(cli.key.clone()),
        tls_name: cli.tls_name.clone(),
    })
    .await?;
    let out = cli.output;
    match cli.command {
        Command::Info => {
            let info = conn
                .unary(conn.relay().get_info(pb::GetInfoRequest {}))
                .await?;
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"version": info.version, "uptime_seconds": info.uptime_seconds})
                ),
                Output::Table => print_pairs(&[
                    ("version", info.version),
                    ("uptime", format_duration(info.uptime_seconds)),
                ]),
            }
        }
        Command::Health => {
            let status = conn
                .unary(conn.health().check(HealthCheckRequest {
                    service: String::new(),
                }))
                .await?
                .status();
            let name = status.as_str_name();
            match out {
                Output::Json => println!("{}", json!({ "status": name })),
                Output::Table => print_pairs(&[("status", name.to_owned())]),
            }
            if status != ServingStatus::Serving {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Sessions(SessionsCommand::List { state, labels }) => {
            let sessions = list_all(&conn, state, labels).await?;
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"sessions": sessions.iter().map(session_json).collect::<Vec<_>>()})
                ),
                Output::Table => print_session_list(&sessions),
            }
        }
        Command::Sessions(SessionsCommand::Show { call_id }) => {
            let session = conn
                .unary(conn.relay().get_session(pb::GetSessionRequest { call_id }))
                .await?
                .session
                .ok_or_else(|| anyhow!("the relay returned no session"))?;
            match out {
                Output::Json => println!("{}", session_json(&session)),
                Output::Table => print_session(&session),
            }
        }
        Command::Sessions(SessionsCommand::Delete {
            call_id,
            from_tag,
            to_tag,
            index,
        }) => {
            conn.unary(conn.relay().delete(pb::DeleteRequest {
                call_id: call_id.clone(),
                from_tag,
                to_tag,
                index,
            }))
            .await?;
            match out {
                Output::Json => println!("{}", json!({"deleted": call_id})),
                Output::Table => println!("deleted {call_id}"),
            }
        }
        Command::Stats => {
            let stats = conn
                .unary(conn.relay().get_stats(pb::GetStatsRequest {}))
                .await?;
            match out {
                Output::Json => println!("{}", stats_json(&stats)),
                Output::Table => print_stats(&stats),
            }
        }
        Command::Watch { call_id } => {
            let mut stream = conn
                .unary(conn.relay().watch(pb::WatchRequest {
                    call_id: call_id.unwrap_or_default(),
                }))
                .await?;
            loop {
                match stream.message().await {
                    Ok(Some(event)) => match out {
                        Output::Json => println!("{}", event_json(&event)),
                        Output::Table => println!("{}", event_line(&event)),
                    },
                    Ok(None) => break,
                    Err(status) => return Err(status_error(&status)),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list_all(
    conn: &Connection,
    state: Option<State>,
    labels: Vec<(String, String)>,
) -> anyhow::Result<Vec<pb::Session>> {
    let state = match state {
        None => pb::SessionState::Unspecified,
        Some(State::Offered) => pb::SessionState::Offered,
        Some(State::Answered) => pb::SessionState::Answered,
    };
    let mut request = pb::ListSessionsRequest {
        page_size: PAGE_SIZE,
        page_token: String::new(),
        state: state as i32,
        labels: labels.into_iter().collect(),
    };
    let mut sessions = Vec::new();
    for _ in 0..MAX_PAGES {
        let page = conn
            .unary(conn.relay().list_sessions(request.clone()))
            .await?;
        sessions.extend(page.sessions);
        if page.next_page_token.is_empty() {
            return Ok(sessions);
        }
        request.page_token = page.next_page_token;
    }
    Err(anyhow!("more than {MAX_PAGES} pages of sessions"))
}

// ----- JSON -----

fn addr(a: Option<&pb::SocketAddress>) -> Value {
    match a {
        None => Value::Null,
        Some(a) => Value::String(addr_string(a)),
    }
}

fn addr_string(a: &pb::SocketAddress) -> String {
    match a.ip.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, u16::try_from(a.port).unwrap_or(0)).to_string(),
        Err(_) => format!("{}:{}", a.ip, a.port),
    }
}

fn state_name(s: pb::SessionState) -> &'static str {
    match s {
        pb::SessionState::Unspecified => "unspecified",
        pb::SessionState::Offered => "offered",
        pb::SessionState::Answered => "answered",
    }
}

fn path_name(p: pb::ForwardingPath) -> &'static str {
    match p {
        pb::ForwardingPath::Unspecified => "unspecified",
        pb::ForwardingPath::Userspace => "userspace",
        pb::ForwardingPath::Kernel => "kernel",
    }
}

fn kind_name(k: pb::EventKind) -> &'static str {
    match k {
        pb::EventKind::Unspecified => "unspecified",
        pb::EventKind::Created => "created",
        pb::EventKind::Answered => "answered",
        pb::EventKind::Latched => "latched",
        pb::EventKind::Relatched => "relatched",
        pb::EventKind::Offloaded => "offloaded",
        pb::EventKind::Ended => "ended",
    }
}

fn reason_name(r: pb::EndReason) -> &'static str {
    match r {
        pb::EndReason::Unspecified => "unspecified",
        pb::EndReason::Deleted => "deleted",
        pb::EndReason::SetupTimeout => "setup_timeout",
        pb::EndReason::MediaTimeout => "media_timeout",
        pb::EndReason::Ttl => "ttl",
    }
}

fn labels_json(labels: &std::collections::HashMap<String, String>) -> Value {
    // Sorted by key, whatever serde_json's map keeps: stable output.
    let mut pairs: Vec<(&String, &String)> = labels.iter().collect();
    pairs.sort();
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<String, Value>>(),
    )
}

fn counters_json(c: &pb::LegCounters) -> Value {
    let d = c.dropped.unwrap_or_default();
    json!({
        "rx_packets": c.rx_packets,
        "rx_bytes": c.rx_bytes,
        "tx_packets": c.tx_packets,
        "tx_bytes": c.tx_bytes,
        "dropped": {
            "source": d.source,
            "no_destination": d.no_destination,
            "overflow": d.overflow,
            "send": d.send,
        },
        "non_rtp": c.non_rtp,
        "rtp_expected": c.rtp_expected,
        "rtp_lost": c.rtp_lost,
        "rtp_out_of_order": c.rtp_out_of_order,
        "jitter_ms": c.jitter_ms,
        "idle_ms": c.idle_ms,
    })
}

fn leg_json(l: &pb::Leg) -> Value {
    json!({
        "tag": l.tag,
        "interface": l.interface,
        "local_rtp": addr(l.local_rtp.as_ref()),
        "advertised_address": l.advertised_address,
        "sdp_rtp": addr(l.sdp_rtp.as_ref()),
        "latched_rtp": addr(l.latched_rtp.as_ref()),
        "latched_rtcp": addr(l.latched_rtcp.as_ref()),
        "path": path_name(l.path()),
        "counters": counters_json(&l.counters.unwrap_or_default()),
    })
}

fn session_json(s: &pb::Session) -> Value {
    json!({
        "call_id": s.call_id,
        "state": state_name(s.state()),
        "age_ms": s.age_ms,
        "remaining_ms": s.remaining_ms,
        "setup_timeout_ms": s.setup_timeout_ms,
        "media_timeout_ms": s.media_timeout_ms,
        "labels": labels_json(&s.labels),
        "streams": s.streams.iter().map(|st| json!({
            "id": st.id,
            "index": st.index,
            "legs": st.legs.iter().map(leg_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn stats_json(s: &pb::GetStatsResponse) -> Value {
    let ss = s.sessions.unwrap_or_default();
    let dp = s.datapath.unwrap_or_default();
    json!({
        "sessions": {
            "created": ss.created,
            "deleted": ss.deleted,
            "setup_timeout": ss.setup_timeout,
            "media_timeout": ss.media_timeout,
            "ttl": ss.ttl,
            "active": ss.active,
            "streams_active": ss.streams_active,
        },
        "datapath": {
            "packets_received": dp.packets_received,
            "packets_forwarded": dp.packets_forwarded,
            "dropped_oversize": dp.dropped_oversize,
            "streams": dp.streams,
        },
        "port_pools": s.port_pools.iter().map(|p| json!({
            "interface": p.interface,
            "total": p.total,
            "in_use": p.in_use,
            "quarantined": p.quarantined,
            "available": p.available,
        })).collect::<Vec<_>>(),
    })
}

fn event_json(e: &pb::Event) -> Value {
    let mut v = json!({
        "kind": kind_name(e.kind()),
        "call_id": e.call_id,
        "unix_time_ms": e.unix_time_ms,
    });
    if let Value::Object(map) = &mut v {
        match e.kind() {
            pb::EventKind::Latched | pb::EventKind::Relatched | pb::EventKind::Offloaded => {
                map.insert("stream_id".into(), json!(e.stream_id));
                map.insert("leg".into(), json!(e.leg));
                map.insert("rtcp".into(), json!(e.rtcp));
                map.insert("address".into(), addr(e.address.as_ref()));
                map.insert("relatched".into(), json!(e.relatched));
            }
            pb::EventKind::Ended => {
                map.insert("reason".into(), json!(reason_name(e.reason())));
            }
            _ => {}
        }
    }
    v
}

// ----- tables -----

fn print_pairs(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        println!("{key:<width$}  {value}");
    }
}

/// Prints rows under a header with every column padded to its widest cell.
fn print_columns(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn format_duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h {m}m {s}s")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

fn format_labels(labels: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

fn leg_totals(s: &pb::Session) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    for leg in s.streams.iter().flat_map(|st| &st.legs) {
        let c = leg.counters.unwrap_or_default();
        let d = c.dropped.unwrap_or_default();
        t.0 += c.rx_packets;
        t.1 += c.tx_packets;
        t.2 += d.source + d.no_destination + d.overflow + d.send;
    }
    t
}

fn print_session_list(sessions: &[pb::Session]) {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let (rx, tx, dropped) = leg_totals(s);
            vec![
                s.call_id.clone(),
                state_name(s.state()).to_owned(),
                format_duration(s.age_ms / 1000),
                format_duration(s.remaining_ms / 1000),
                s.streams.len().to_string(),
                rx.to_string(),
                tx.to_string(),
                dropped.to_string(),
                format_labels(&s.labels),
            ]
        })
        .collect();
    print_columns(
        &[
            "CALL-ID",
            "STATE",
            "AGE",
            "REMAINING",
            "STREAMS",
            "RX-PKTS",
            "TX-PKTS",
            "DROPPED",
            "LABELS",
        ],
        &rows,
    );
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".to_owned() } else { s }
}

fn addr_cell(a: Option<&pb::SocketAddress>) -> String {
    a.map_or_else(|| "-".to_owned(), addr_string)
}

fn print_session(s: &pb::Session) {
    print_pairs(&[
        ("call-id", s.call_id.clone()),
        ("state", state_name(s.state()).to_owned()),
        ("age", format_duration(s.age_ms / 1000)),
        ("remaining", format_duration(s.remaining_ms / 1000)),
        (
            "timeouts",
            format!(
                "setup {}, media {}",
                format_duration(s.setup_timeout_ms / 1000),
                format_duration(s.media_timeout_ms / 1000)
            ),
        ),
        ("labels", or_dash(format_labels(&s.labels))),
    ]);
    let mut rows = Vec::new();
    for st in &s.streams {
        for (i, l) in st.legs.iter().enumerate() {
            let c = l.counters.unwrap_or_default();
            let d = c.dropped.unwrap_or_default();
            rows.push(vec![
                format!("{}/{}", st.index, i),
                or_dash(l.tag.clone()),
                addr_cell(l.local_rtp.as_ref()),
                addr_cell(l.sdp_rtp.as_ref()),
                addr_cell(l.latched_rtp.as_ref()),
                format!("{}/{}", c.rx_packets, c.rx_bytes),
                format!("{}/{}", c.tx_packets, c.tx_bytes),
                (d.source + d.no_destination + d.overflow + d.send).to_string(),
                format!("{}/{}", c.rtp_lost, c.rtp_expected),
                format!("{:.1}", c.jitter_ms),
                path_name(l.path()).to_owned(),
            ]);
        }
    }
    println!();
    print_columns(
        &[
            "STREAM/LEG",
            "TAG",
            "LOCAL",
            "SDP",
            "LATCHED",
            "RX PKTS/BYTES",
            "TX PKTS/BYTES",
            "DROPPED",
            "LOST/EXPECTED",
            "JITTER-MS",
            "PATH",
        ],
        &rows,
    );
}

fn print_stats(s: &pb::GetStatsResponse) {
    let ss = s.sessions.unwrap_or_default();
    let dp = s.datapath.unwrap_or_default();
    print_pairs(&[
        ("sessions active", ss.active.to_string()),
        ("streams active", ss.streams_active.to_string()),
        ("sessions created", ss.created.to_string()),
        ("sessions deleted", ss.deleted.to_string()),
        ("setup timeouts", ss.setup_timeout.to_string()),
        ("media timeouts", ss.media_timeout.to_string()),
        ("ttl expiries", ss.ttl.to_string()),
        ("packets received", dp.packets_received.to_string()),
        ("packets forwarded", dp.packets_forwarded.to_string()),
        ("dropped oversize", dp.dropped_oversize.to_string()),
    ]);
    println!();
    let rows: Vec<Vec<String>> = s
        .port_pools
        .iter()
        .map(|p| {
            vec![
                p.interface.clone(),
                p.total.to_string(),
                p.in_use.to_string(),
                p.quarantined.to_string(),
                p.available.to_string(),
            ]
        })
        .collect();
    print_columns(
        &["INTERFACE", "PAIRS", "IN-USE", "QUARANTINED", "AVAILABLE"],
        &rows,
    );
}

fn event_line(e: &pb::Event) -> String {
    let secs = e.unix_time_ms / 1000;
    let time = format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        e.unix_time_ms % 1000
    );
    let detail = match e.kind() {
        pb::EventKind::Latched | pb::EventKind::Relatched | pb::EventKind::Offloaded => format!(
            "stream {} leg {} {} {}",
            e.stream_id,
            e.leg,
            if e.rtcp { "rtcp" } else { "rtp" },
            addr_cell(e.address.as_ref())
        ),
        pb::EventKind::Ended => reason_name(e.reason()).to_owned(),
        _ => String::new(),
    };
    format!(
        "{time}Z  {:<9}  {}  {detail}",
        kind_name(e.kind()),
        e.call_id
    )
    .trim_end()
    .to_owned()
}
