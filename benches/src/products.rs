//! Creating the products whose `new_product` events the clients wait for:
//! minting the admin token, and POSTing one product per event to
//! `/api/v1/products` on a thread of its own; or, against the rooms example,
//! POSTing the same product fields to a channel or to everyone.

use crate::args::{Args, Server, Target};
use crate::report::keep_error;
use crate::stats::UNSET;
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

/// What the POSTing thread hands back.
pub(crate) struct PostResults {
    /// Per event: instant (µs since epoch) its POST was sent, if it answered 201.
    pub(crate) sent: Vec<Option<u32>>,
    pub(crate) errors: Vec<String>,
    /// Instant the last POST answered.
    pub(crate) finished: Instant,
}

/// The product fields for event `index` of run `run`; slug and name are
/// unique per run so servers that reject duplicates accept them all.
fn product_body(run: &str, index: usize, description_bytes: usize) -> String {
    let mut description = format!("Created by the load generator, event {index}.");
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
    /// The admin token ocha-server wants; the rooms example wants none.
    token: Option<&'a str>,
    /// The answer that means the event was published.
    published: hyper::StatusCode,
}

/// Sends one POST; returns the instant it was sent if the server answered
/// that it published the event.
async fn post_one(
    sender: &mut Sender,
    post: &Post<'_>,
    body: String,
    epoch: Instant,
) -> Result<u32, String> {
    let mut request = hyper::Request::post(&post.path)
        .header("host", &post.target.authority)
        .header("content-type", "application/json");
    if let Some(token) = post.token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    sender
        .ready()
        .await
        .map_err(|e| format!("POST connection: {e}"))?;
    let sent = u32::try_from(epoch.elapsed().as_micros()).unwrap_or(UNSET - 1);
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
    epoch: Instant,
) -> PostResults {
    let (token, published) = match args.server {
        Server::Ocha => (Some(token), hyper::StatusCode::CREATED),
        Server::Rooms { .. } => (None, hyper::StatusCode::OK),
    };
    let post = Post {
        target,
        path: args.post_path(),
        token,
        published,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut sent = vec![None; args.events];
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
            let body = product_body(run, index, args.description_bytes);
            match post_one(sender_ref, &post, body, epoch).await {
                Ok(at) => *slot = Some(at),
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
        let a: serde_json::Value = serde_json::from_str(&product_body("r1", 0, 0)).unwrap();
        let b: serde_json::Value = serde_json::from_str(&product_body("r1", 1, 500)).unwrap();
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
}
