//! The Redis harness, for the fan-out tests: a server of its own that
//! answers, stops, and comes back on the same port.

mod common;

use common::redis::{ping, RedisServer};

#[test]
fn the_harness_starts_stops_and_restarts_redis_on_the_same_port() {
    let mut redis = RedisServer::new();
    let port = redis.port();
    assert!((20000..32000).contains(&port), "{port}");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert!(ping(port));

    redis.stop();
    assert!(!ping(port));
    redis.start();
    assert_eq!(redis.port(), port);
    assert!(ping(port));

    redis.kill();
    assert!(!ping(port));
    redis.start();
    assert!(ping(port));

    drop(redis);
    assert!(!ping(port), "still running after drop");
}
