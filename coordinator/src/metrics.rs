//! The coordinator's Prometheus metrics (crate `prometheus-client`, one registry per
//! coordinator, so that several coordinators in one process never mix their figures).
//!
//! Everything is counted at a few clear points of the I/O layer — a connection accepted or
//! closed, a handshake refused, a message received or sent, a registry event — never inside the
//! data path's logic. Gauges that describe state (sessions by state, home-copy bytes) are read
//! from the registry when `/metrics` is scraped. `metrics/http.rs` serves the text.
//!
//! Transaction latency is the time from a request arriving to its reply leaving the
//! coordinator (fetch → data, own → grant, replayed write → ack or retry, barrier entry →
//! release, semaphore wait → acquired): what a process waits for, minus the network.

mod http;

use std::collections::HashMap;
use std::time::Instant;

use dsm_proto::{ReqId, ToCoordinator, ToProcess};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as PromRegistry;

use crate::registry::{ConnId, EndedSession, Event, SessionCounts};

pub(crate) use http::MetricsEndpoint;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Open transactions tracked for latency at most; beyond this (a client flooding requests that
/// are never answered) new ones are not timed, so the table cannot grow without bound.
const MAX_OPEN: usize = 1 << 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    direction: &'static str,
    kind: &'static str,
}

type HistogramFamily = Family<KindLabel, Histogram, fn() -> Histogram>;

/// Open transactions: what each connection waits for, its kind and since when.
type OpenTable = HashMap<(ConnId, Awaited), (&'static str, Instant)>;

/// What an open transaction waits for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Awaited {
    Reply(ReqId),
    Barrier(u64),
}

/// Every metric of one coordinator. Cheap to update from any task (atomics; one small mutex
/// for the open-transaction table).
#[derive(Debug)]
pub struct Metrics {
    registry: PromRegistry,
    connections_accepted: Counter,
    connections_open: Gauge,
    connections_closed: Family<ReasonLabel, Counter>,
    handshakes_refused: Family<ReasonLabel, Counter>,
    sessions: Family<StateLabel, Gauge>,
    sessions_started: Counter,
    sessions_ended: Counter,
    ranks_lost: Counter,
    home_bytes: Gauge,
    messages: Family<MessageLabels, Counter>,
    faults_served: Family<KindLabel, Counter>,
    page_bytes: Family<MessageLabels, Counter>,
    pages_forwarded: Counter,
    transaction_seconds: HistogramFamily,
    open: Mutex<OpenTable>,
}

fn latency_histogram() -> Histogram {
    // 10 µs .. ~20 s: a loopback fault takes ~100 µs, a barrier across machines milliseconds,
    // a semaphore wait as long as the program makes it.
    Histogram::new(exponential_buckets(1e-5, 2.0, 22))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero, registered under the `dsm_` prefix.
    pub fn new() -> Self {
        let mut registry = PromRegistry::with_prefix("dsm");
        let m = Metrics {
            connections_accepted: Counter::default(),
            connections_open: Gauge::default(),
            connections_closed: Family::default(),
            handshakes_refused: Family::default(),
            sessions: Family::default(),
            sessions_started: Counter::default(),
            sessions_ended: Counter::default(),
            ranks_lost: Counter::default(),
            home_bytes: Gauge::default(),
            messages: Family::default(),
            faults_served: Family::default(),
            page_bytes: Family::default(),
            pages_forwarded: Counter::default(),
            transaction_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            open: Mutex::new(HashMap::new()),
            registry: PromRegistry::default(),
        };
        registry.register(
            "connections_accepted",
            "QUIC connections that completed the TLS handshake",
            m.connections_accepted.clone(),
        );
        registry.register("connections_open", "Client connections open now", m.connections_open.clone());
        registry.register(
            "connections_closed",
            "Client connections closed, by how (clean or error)",
            m.connections_closed.clone(),
        );
        registry.register(
            "handshakes_refused",
            "Connections refused before serving them, by stage (tls: certificate or TLS failure; hello: bad magic or version; timeout: no hello in time)",
            m.handshakes_refused.clone(),
        );
        registry.register("sessions", "Sessions by state (waiting or running)", m.sessions.clone());
        registry.register("sessions_started", "Sessions that started (every process attached)", m.sessions_started.clone());
        registry.register("sessions_ended", "Sessions that ended", m.sessions_ended.clone());
        registry.register(
            "ranks_lost",
            "Processes of running sessions that disconnected or went silent without detaching",
            m.ranks_lost.clone(),
        );
        registry.register(
            "home_copy_bytes",
            "Bytes of home copies held for running sessions' regions",
            m.home_bytes.clone(),
        );
        registry.register(
            "messages",
            "Protocol messages, by direction (received or sent) and kind",
            m.messages.clone(),
        );
        registry.register(
            "faults_served",
            "Page faults answered: read (data for a fetch, or a note that another process sends it), write (ownership grant), replay (replayed store acknowledged)",
            m.faults_served.clone(),
        );
        registry.register(
            "page_bytes",
            "Page bytes moved, by direction and message kind (zero pages travel without bytes)",
            m.page_bytes.clone(),
        );
        registry.register(
            "pages_forwarded",
            "Pages sent directly from the process holding them to the process that asked (their bytes do not cross the coordinator)",
            m.pages_forwarded.clone(),
        );
        registry.register(
            "transaction_duration_seconds",
            "Time from a request arriving to its reply leaving the coordinator, by kind",
            m.transaction_seconds.clone(),
        );
        // Series with known labels exist from the start at zero, so that rates and alerts work
        // before the first event (Prometheus convention).
        for reason in ["clean", "error"] {
            drop(m.connections_closed.get_or_create(&ReasonLabel { reason }));
        }
        for reason in ["tls", "hello", "timeout"] {
            drop(m.handshakes_refused.get_or_create(&ReasonLabel { reason }));
        }
        for kind in ["read", "write", "replay"] {
            drop(m.faults_served.get_or_create(&KindLabel { kind }));
        }
        for (direction, kind) in
            [("sent", "data"), ("sent", "grant"), ("received", "writeback"), ("received", "downgrade_ack"), ("received", "recall_ack")]
        {
            drop(m.page_bytes.get_or_create(&MessageLabels { direction, kind }));
        }
        for kind in ["fetch", "own", "replay", "barrier", "semaphore_wait"] {
            drop(m.transaction_seconds.get_or_create(&KindLabel { kind }));
        }
        Metrics { registry, ..m }
    }

    /// A connection completed its TLS handshake.
    pub(crate) fn on_accept(&self) {
        self.connections_accepted.inc();
    }

    /// A connection was refused at `stage` (`tls`, `hello` or `timeout`).
    pub(crate) fn on_refused(&self, stage: &'static str) {
        self.handshakes_refused.get_or_create(&ReasonLabel { reason: stage }).inc();
    }

    /// A connection passed its hello and is being served.
    pub(crate) fn on_open(&self) {
        self.connections_open.inc();
    }

    /// A served connection ended (`clean` or not); its open transactions are forgotten.
    pub(crate) fn on_close(&self, conn: ConnId, clean: bool) {
        self.connections_open.dec();
        let reason = if clean { "clean" } else { "error" };
        self.connections_closed.get_or_create(&ReasonLabel { reason }).inc();
        self.open.lock().retain(|(c, _), _| *c != conn);
    }

    /// A message arrived from `conn`.
    pub(crate) fn on_receive(&self, conn: ConnId, msg: &ToCoordinator) {
        let kind = received_kind(msg);
        self.messages.get_or_create(&MessageLabels { direction: "received", kind }).inc();
        let bytes = msg.page_bytes();
        if bytes > 0 {
            self.page_bytes
                .get_or_create(&MessageLabels { direction: "received", kind })
                .inc_by(bytes as u64);
        }
        let awaited = match msg {
            ToCoordinator::Fetch { req, .. } | ToCoordinator::FetchRun { req, .. } => Some((Awaited::Reply(*req), "fetch")),
            ToCoordinator::Own { req, .. } | ToCoordinator::ForceOwn { req, .. } => Some((Awaited::Reply(*req), "own")),
            ToCoordinator::Write { req, .. } | ToCoordinator::Rmw { req, .. } => {
                Some((Awaited::Reply(*req), "replay"))
            }
            ToCoordinator::SemaphoreWait { req, .. } => Some((Awaited::Reply(*req), "semaphore_wait")),
            ToCoordinator::Barrier { epoch } => Some((Awaited::Barrier(*epoch), "barrier")),
            _ => None,
        };
        if let Some((what, kind)) = awaited {
            let mut open = self.open.lock();
            if open.len() < MAX_OPEN {
                open.insert((conn, what), (kind, Instant::now()));
            }
        }
    }

    /// A message is being sent to `conn`.
    pub(crate) fn on_send(&self, conn: ConnId, msg: &ToProcess) {
        let kind = sent_kind(msg);
        self.messages.get_or_create(&MessageLabels { direction: "sent", kind }).inc();
        if let ToProcess::Forward { count, .. } = msg {
            self.pages_forwarded.inc_by(u64::from(*count));
        }
        let served = match msg {
            ToProcess::Data { .. } | ToProcess::DataRun { .. } | ToProcess::ForwardNote { .. } => Some("read"),
            ToProcess::Grant { .. } | ToProcess::GrantRun { .. } => Some("write"),
            ToProcess::WriteAck { .. } => Some("replay"),
            _ => None,
        };
        let bytes = msg.page_bytes();
        if let Some(kind) = served {
            // Pages, not messages: a run serves several.
            let pages = match msg {
                ToProcess::DataRun { count, .. } | ToProcess::GrantRun { count, .. } | ToProcess::ForwardNote { count, .. } => {
                    u64::from(*count)
                }
                _ => 1,
            };
            self.faults_served.get_or_create(&KindLabel { kind }).inc_by(pages);
        }
        if bytes > 0 {
            self.page_bytes.get_or_create(&MessageLabels { direction: "sent", kind }).inc_by(bytes as u64);
        }
        let answered = match msg {
            ToProcess::Data { req, .. }
            | ToProcess::Grant { req, .. }
            | ToProcess::DataRun { req, .. }
            | ToProcess::GrantRun { req, .. }
            | ToProcess::ForwardNote { req, .. }
            | ToProcess::WriteAck { req, .. }
            | ToProcess::Retry { req, .. }
            | ToProcess::SemaphoreAcquired { req }
            | ToProcess::Failed { req: Some(req), .. } => Some(Awaited::Reply(*req)),
            ToProcess::BarrierDone { epoch } => Some(Awaited::Barrier(*epoch)),
            ToProcess::Failed { req: None, .. } => {
                // A failed barrier: whatever epoch it was, it is over.
                self.open.lock().retain(|(c, w), _| !(*c == conn && matches!(w, Awaited::Barrier(_))));
                None
            }
            _ => None,
        };
        if let Some(what) = answered {
            if let Some((kind, since)) = self.open.lock().remove(&(conn, what)) {
                self.transaction_seconds
                    .get_or_create(&KindLabel { kind })
                    .observe(since.elapsed().as_secs_f64());
            }
        }
    }

    /// A registry event happened.
    pub(crate) fn on_event(&self, event: &Event) {
        match event {
            Event::SessionStarted { .. } => {
                self.sessions_started.inc();
            }
            Event::RankLost { .. } => {
                self.ranks_lost.inc();
            }
            _ => {}
        }
    }

    /// A session ended.
    pub(crate) fn on_ended(&self, _ended: &EndedSession) {
        self.sessions_ended.inc();
    }

    /// The metrics as OpenMetrics text (what Prometheus scrapes), with the state gauges set
    /// from `counts` first.
    pub fn render(&self, counts: SessionCounts) -> String {
        self.sessions.get_or_create(&StateLabel { state: "waiting" }).set(gauge(counts.waiting));
        self.sessions.get_or_create(&StateLabel { state: "running" }).set(gauge(counts.running));
        self.home_bytes.set(gauge(counts.home_bytes));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn received_kind(msg: &ToCoordinator) -> &'static str {
    match msg {
        ToCoordinator::Attach(_) => "attach",
        ToCoordinator::Barrier { .. } => "barrier",
        ToCoordinator::SemaphoreWait { .. } => "semaphore_wait",
        ToCoordinator::SemaphorePost { .. } => "semaphore_post",
        ToCoordinator::Fetch { .. } => "fetch",
        ToCoordinator::Own { .. } => "own",
        ToCoordinator::ForceOwn { .. } => "force_own",
        ToCoordinator::InvalidateAck { .. } => "invalidate_ack",
        ToCoordinator::DowngradeAck { .. } => "downgrade_ack",
        ToCoordinator::RecallAck { .. } => "recall_ack",
        ToCoordinator::Writeback { .. } => "writeback",
        ToCoordinator::Detach => "detach",
        ToCoordinator::Write { .. } => "write",
        ToCoordinator::Rmw { .. } => "rmw",
        ToCoordinator::Advise { .. } => "advise",
        ToCoordinator::Ping { .. } => "ping",
        ToCoordinator::Status { .. } => "status",
        ToCoordinator::FetchRun { .. } => "fetch",
        ToCoordinator::OwnRun { conditional: false, .. } => "own",
        ToCoordinator::OwnRun { conditional: true, .. } => "write_ahead",
        ToCoordinator::InvalidateAckRun { .. } => "invalidate_ack",
        ToCoordinator::DowngradeAckRun { .. } => "downgrade_ack",
        ToCoordinator::RecallAckRun { .. } => "recall_ack",
        ToCoordinator::WritebackRun { .. } => "writeback",
        ToCoordinator::Got { .. } => "got",
        ToCoordinator::ForwardAborted { .. } => "forward_aborted",
        ToCoordinator::ForwardReturn { .. } => "forward_return",
        ToCoordinator::BackupAck { .. } => "backup_ack",
        ToCoordinator::BackupData { .. } => "backup_data",
        ToCoordinator::BackupHome { .. } => "backup_home",
    }
}

fn sent_kind(msg: &ToProcess) -> &'static str {
    match msg {
        ToProcess::Joined { .. } => "joined",
        ToProcess::Attached { .. } => "attached",
        ToProcess::Refused(_) => "refused",
        ToProcess::BarrierDone { .. } => "barrier_done",
        ToProcess::SemaphoreAcquired { .. } => "semaphore_acquired",
        ToProcess::SemaphorePosted { .. } => "semaphore_posted",
        ToProcess::Failed { .. } => "failed",
        ToProcess::Data { .. } => "data",
        ToProcess::Grant { .. } => "grant",
        ToProcess::Invalidate { .. } => "invalidate",
        ToProcess::Downgrade { .. } => "downgrade",
        ToProcess::Recall { .. } => "recall",
        ToProcess::Update { .. } => "update",
        ToProcess::WriteAck { .. } => "write_ack",
        ToProcess::Retry { .. } => "retry",
        ToProcess::ModeHint { .. } => "mode_hint",
        ToProcess::Advice { .. } => "advice",
        ToProcess::Detached => "detached",
        ToProcess::Forward { .. } => "forward",
        ToProcess::ForwardNote { .. } => "forward_note",
        ToProcess::ForwardAbort { .. } => "forward_abort",
        ToProcess::InvBackup { .. } => "inv_backup",
        ToProcess::DropBackup { .. } => "drop_backup",
        ToProcess::RestoreBackup { .. } => "restore_backup",
        ToProcess::Pong { .. } => "pong",
        ToProcess::Status { .. } => "status",
        // A run is the same kind of message for several pages.
        ToProcess::DataRun { .. } => "data",
        ToProcess::GrantRun { .. } => "grant",
        ToProcess::Denied { .. } => "denied",
        ToProcess::InvalidateRun { .. } => "invalidate",
        ToProcess::DowngradeRun { .. } => "downgrade",
        ToProcess::RecallRun { .. } => "recall",
    }
}

#[cfg(test)]
mod tests {
    use dsm_proto::{GrantData, Mode, PageData};

    use super::*;

    fn sample(text: &str, line_start: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sample {line_start:?} in:\n{text}"))
    }

    #[test]
    fn page_traffic_and_latency_are_counted_at_the_messages() {
        let m = Metrics::new();
        m.on_receive(1, &ToCoordinator::Fetch { req: 5, page: 0 });
        m.on_send(
            1,
            &ToProcess::Data { req: 5, page: 0, data: Some(PageData::from(vec![1; 4096])), mode: Mode::Invalidate },
        );
        m.on_receive(1, &ToCoordinator::Writeback { page: 0, data: PageData::from(vec![2; 4096]) });
        // A reply to another connection's request id does not close this one's transaction.
        m.on_receive(2, &ToCoordinator::Own { req: 5, page: 1 });
        m.on_send(1, &ToProcess::Grant { req: 5, page: 1, data: Some(GrantData::Zero) });
        let text = m.render(SessionCounts { waiting: 1, running: 2, home_bytes: 8192 });

        assert_eq!(sample(&text, "dsm_faults_served_total{kind=\"read\"}"), 1.0);
        assert_eq!(sample(&text, "dsm_faults_served_total{kind=\"write\"}"), 1.0);
        assert_eq!(sample(&text, "dsm_page_bytes_total{direction=\"sent\",kind=\"data\"}"), 4096.0);
        assert_eq!(sample(&text, "dsm_page_bytes_total{direction=\"received\",kind=\"writeback\"}"), 4096.0);
        assert_eq!(sample(&text, "dsm_transaction_duration_seconds_count{kind=\"fetch\"}"), 1.0);
        assert_eq!(sample(&text, "dsm_transaction_duration_seconds_count{kind=\"own\"}"), 0.0);
        // A read served by a forward: the note answers it, the page is counted as forwarded.
        m.on_receive(2, &ToCoordinator::FetchRun { req: 6, first: 4, count: 3 });
        m.on_send(1, &ToProcess::Forward { req: 6, first: 4, count: 3, to: 1 });
        m.on_send(2, &ToProcess::ForwardNote { req: 6, first: 4, count: 3 });
        let text = m.render(SessionCounts { waiting: 1, running: 2, home_bytes: 8192 });
        assert_eq!(sample(&text, "dsm_faults_served_total{kind=\"read\"}"), 4.0);
        assert_eq!(sample(&text, "dsm_pages_forwarded_total"), 3.0);
        assert_eq!(sample(&text, "dsm_transaction_duration_seconds_count{kind=\"fetch\"}"), 2.0);
        assert_eq!(sample(&text, "dsm_sessions{state=\"running\"}"), 2.0);
        assert_eq!(sample(&text, "dsm_home_copy_bytes"), 8192.0);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_closed_connection_forgets_its_open_transactions() {
        let m = Metrics::new();
        m.on_open();
        m.on_receive(3, &ToCoordinator::Barrier { epoch: 0 });
        m.on_close(3, false);
        m.on_send(3, &ToProcess::BarrierDone { epoch: 0 });
        let text = m.render(SessionCounts::default());
        assert_eq!(sample(&text, "dsm_transaction_duration_seconds_count{kind=\"barrier\"}"), 0.0);
        assert_eq!(sample(&text, "dsm_connections_closed_total{reason=\"error\"}"), 1.0);
        assert_eq!(sample(&text, "dsm_connections_open"), 0.0);
    }
}
