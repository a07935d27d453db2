//! Scraping `GET /metrics`: the body checked by `promtool check metrics`
//! (Debian's `prometheus` package, which scripts/test.sh installs), and its
//! samples read back.

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::get;

/// One scrape's samples.
pub struct Scrape {
    pub text: String,
}

/// Scrapes the server at `addr` and checks the body with promtool.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let reply = get(addr, "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = reply.text().to_owned();
    promtool_check(&text).await;
    Scrape { text }
}

/// Runs `promtool check metrics` on `text`; panics with its complaints.
pub async fn promtool_check(text: &str) {
    let mut promtool = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(promtool) => promtool,
        Err(error) => panic!(
            "cannot run promtool ({error}): install Debian's prometheus package, \
             as scripts/test.sh does"
        ),
    };
    let mut stdin = promtool.stdin.take().expect("a piped stdin");
    stdin
        .write_all(text.as_bytes())
        .await
        .expect("feed promtool");
    drop(stdin);
    let output = promtool.wait_with_output().await.expect("run promtool");
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\nfor:\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

impl Scrape {
    /// The value of the sample `name` whose labels are exactly `labels`, in
    /// any order; `None` if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut wanted: Vec<String> = labels
            .iter()
            .map(|(label, value)| format!("{label}=\"{value}\""))
            .collect();
        wanted.sort();
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (sample, labels) = match series.split_once('{') {
                    Some((sample, labels)) => (sample, labels.strip_suffix('}')?),
                    None => (series, ""),
                };
                // The server's label values hold no comma or quote.
                let mut labels: Vec<String> = labels
                    .split(',')
                    .filter(|label| !label.is_empty())
                    .map(str::to_owned)
                    .collect();
                labels.sort();
                (sample == name && labels == wanted).then(|| value.parse().expect("a number"))
            })
    }

    /// Like [`value`](Self::value), for a sample that must be there.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", self.text))
    }
}
