//! Scraping a coordinator's `/metrics` with a real HTTP client (hyper) and parsing the text with
//! an independent Prometheus parser (`prometheus-parse`).

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use prometheus_parse::{LineInfo, Scrape, Value};

/// One scrape: the response's status and content type, its text, and the parsed samples.
pub struct Metrics {
    pub status: u16,
    pub content_type: String,
    pub text: String,
    pub parsed: Scrape,
}

/// GETs `path` from `addr` over HTTP/1.1.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the metrics endpoint");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP handshake");
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("HTTP request");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.into_body().collect().await.expect("HTTP body").to_bytes();
        (status, content_type, String::from_utf8(body.to_vec()).expect("UTF-8 metrics"))
    })
}

/// Scrapes `/metrics` and parses it, checking that every line is a comment, a sample or blank
/// (the parser skips what it does not understand, so that is checked here line by line).
pub fn scrape(addr: SocketAddr) -> Metrics {
    let (status, content_type, text) = get(addr, "/metrics");
    for line in text.lines() {
        // `# EOF` ends OpenMetrics text, the format Prometheus negotiates first.
        if line == "# EOF" {
            continue;
        }
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored),
            "not a line of the Prometheus text format: {line:?}\n{text}"
        );
    }
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse the metrics text");
    Metrics { status, content_type, text, parsed }
}

impl Metrics {
    fn sample(&self, name: &str, labels: &[(&str, &str)]) -> &prometheus_parse::Sample {
        self.parsed
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{}", self.text))
    }

    /// The buckets of histogram `name` with `labels`, as (upper bound, cumulative count).
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        match &self.sample(name, labels).value {
            Value::Histogram(buckets) => buckets.iter().map(|b| (b.less_than, b.count)).collect(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    /// The value of sample `name` whose labels include all of `labels`; panics if none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = self.sample(name, labels);
        match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        }
    }
}
