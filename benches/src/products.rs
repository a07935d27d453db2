//! Creating the products whose `new_product` events the clients wait for:
//! minting the admin token, and POSTing one product per event to
//! `/api/v1/products` on a thread of its own; or, against the rooms example,
//! POSTing the same product fields to a channel or to everyone.
//!
//! Each product says when its POST was sent, in microseconds since the UNIX
//! epoch: a `--listen-only` loadgen, which POSTs nothing, measures latency
//! from that (see [`sent_stamp`]).

use crate::args::{Args, Server, Target};
use crate::clock::Clock;
use crate::report::keep_error;
use crate::stats::Sent;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpStream;
use tokio::time::sleep_until;

/// Mints an HS256 admin token the way the Ocha API's login does.
pub(crate) fn mint_token(secret: &str) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = serde_json::json!({
        "id": "loadgen",
        "role": "admin",
        "iat": now,
        "exp": now + 24 * 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot mint token: {e}"))
}

/// Precedes the send time in a product's description.
const SENT_MARKER: &str = "; sent at ";

/// What the POSTing thread hands back.
pub(crate) struct PostResults {
    /// Per event: when its POST was sent, unless it failed.
    pub(crate) sent: Vec<Sent>,
    pub(crate) errors: Vec<String>,
    /// Instant the last POST answered.
    pub(crate) finished: Instant,
}

/// The product fields for event `index` of run `run`, sent at `sent_unix_us`;
/// slug and name are unique per run so servers that reject duplicates accept
/// them all.
fn product_body(run: &str, index: usize, sent_unix_us: u64, description_bytes: usize) -> String {
    let mut description = format!(
        "Created by the load generator, event {index}{SENT_MARKER}{sent_unix_us} \
         (microseconds since the UNIX epoch)."
    );
    if description.len() < description_bytes {
        description.extend(std::iter::repeat_n(
            'x',
            description_bytes - description.len(),
        ));
    }
    serde_json::json!({
        "slug": format!("lg-{run}-{index}"),
        "name": format!("Loadgen {run} #{index}"),
        "category": "loadgen",
        "description": description,
        "basePriceCHF": 12.5,
        "image": "/images/loadgen.png",
    })
    .to_string()
}

/// The send time written in an event's product (see [`product_body`]), in
/// µs since the UNIX epoch.
pub(crate) fn sent_stamp(frame: &str) -> Option<u64> {
    let start = frame.find(SENT_MARKER)? + SENT_MARKER.len();
    let digits = &frame[start..];
    let end = digits.bytes().position(|b| !b.is_ascii_digit())?;
    digits[..end].parse().ok()
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http_connect(target: &Target) -> Result<Sender, String> {
    let stream = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("POST connect: {e}"))?;
    stream.set_nodelay(true).ok();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("POST handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Where and how one event is POSTed.
struct Post<'a> {
    target: &'a Target,
    path: String,
    /// The run id, part of every product's slug and name.
    run: &'a str,
    description_bytes: usize,
    /// The admin token ocha-server wants; the rooms example wants none.
    token: Option<&'a str>,
    /// The answer that means the event was published.
    published: hyper::StatusCode,
}

/// Sends the POST creating event `index`; returns the instant it was sent
/// if the server answered that it published the event.
async fn post_one(
    sender: &mut Sender,
    post: &Post<'_>,
    index: usize,
    clock: &Clock,
) -> Result<u32, String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("POST connection: {e}"))?;
    // The body says when it is sent, so it is made at the last moment.
    let sent = clock.now_us();
    let body = product_body(post.run, index, clock.unix_us(sent), post.description_bytes);
    let mut request = hyper::Request::post(&post.path)
        .header("host", &post.target.authority)
        .header("content-type", "application/json");
    if let Some(token) = post.token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("POST: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("POST body: {e}"))?;
    let body = body.to_bytes();
    if status != post.published {
        return Err(format!(
            "POST answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(sent)
}

/// Creates the products on this thread's own runtime, so that the instant a
/// POST is sent is not delayed by the client tasks' backlog. `token` is
/// sent to ocha-server only.
pub(crate) fn post_all(
    args: &Args,
    target: &Target,
    token: &str,
    run: &str,
    clock: &Clock,
) -> PostResults {
    let (token, published) = match args.server {
        Server::Ocha => (Some(token), hyper::StatusCode::CREATED),
        Server::Rooms { .. } => (None, hyper::StatusCode::OK),
    };
    let post = Post {
        target,
        path: args.post_path(),
        run,
        description_bytes: args.description_bytes,
        token,
        published,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut sent = vec![Sent::Failed; args.events];
        let mut errors = Vec::new();
        let mut sender: Option<Sender> = None;
        let start = tokio::time::Instant::now();
        let interval = Duration::from_millis(args.interval_ms);
        for (index, slot) in sent.iter_mut().enumerate() {
            if !args.back_to_back {
                // Scheduled from the start, so a slow answer doesn't shift later events.
                sleep_until(start + interval * index as u32).await;
            }
            if sender.as_ref().is_none_or(Sender::is_closed) {
                match http_connect(target).await {
                    Ok(s) => sender = Some(s),
                    Err(e) => {
                        keep_error(&mut errors, e);
                        continue;
                    }
                }
            }
            let sender_ref = sender.as_mut().expect("connected above");
            match post_one(sender_ref, &post, index, clock).await {
                Ok(at) => *slot = Sent::At(at),
                Err(e) => keep_error(&mut errors, e),
            }
        }
        PostResults {
            sent,
            errors,
            finished: Instant::now(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_are_unique_and_complete() {
        let a: serde_json::Value = serde_json::from_str(&product_body("r1", 0, 1, 0)).unwrap();
        let b: serde_json::Value = serde_json::from_str(&product_body("r1", 1, 1, 500)).unwrap();
        for field in [
            "slug",
            "name",
            "category",
            "description",
            "basePriceCHF",
            "image",
        ] {
            assert!(!a[field].is_null(), "{field} missing");
        }
        assert_ne!(a["slug"], b["slug"]);
        assert_ne!(a["name"], b["name"]);
        assert_eq!(b["description"].as_str().unwrap().len(), 500);
    }

    #[test]
    fn the_send_time_reads_back_from_an_event_frame() {
        let stamp = 1_712_345_678_901_234;
        let body = product_body("r1", 3, stamp, 300);
        let frame = format!(r#"{{"type":"new_product","product":{body},"id":"9"}}"#);
        assert_eq!(sent_stamp(&frame), Some(stamp));
        assert_eq!(sent_stamp(r#"{"slug":"lg-r1-3"}"#), None);
        assert_eq!(sent_stamp("x; sent at 12"), None, "cut short");
    }
}
