//! The relay: events from commits and from the log reach clients once each,
//! in id order, over real sockets.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ocha_realtime::{Config, EventId, EventLog, Hub, Relay};
use support::{assert_quiet, connect, next_text, serve};

/// A log in memory, as a database table would hold it.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Commits event `id` (the next one) and returns its text.
    fn commit(&self) -> (EventId, String) {
        let mut events = self.0.lock().unwrap();
        let id = events.len() as u64 + 1;
        let event = event(id);
        events.push(event.clone());
        (EventId::new(id), event)
    }
}

impl EventLog for Log {
    type Error = Infallible;

    async fn events_after(
        &self,
        after: EventId,
        limit: usize,
    ) -> Result<Vec<(EventId, String)>, Infallible> {
        let events = self.0.lock().unwrap();
        Ok((after.get() + 1..=events.len() as u64)
            .take(limit)
            .map(|id| (EventId::new(id), events[id as usize - 1].clone()))
            .collect())
    }
}

fn event(id: u64) -> String {
    format!(r#"{{"n":{id},"id":"{id}"}}"#)
}

/// A relay that reads the log only when it sees a gap, in practice.
fn relay(hub: &Hub, log: &Log) -> Relay<Log> {
    Relay::builder(hub.clone(), log.clone())
        .poll_interval(Duration::from_secs(3600))
        .start()
}

#[tokio::test]
async fn announced_events_go_out_in_id_order_once_each() {
    let (hub, addr) = serve(Config::default()).await;
    let mut client = connect(addr, "/", ocha_realtime::OCHA_WELCOME).await;
    let log = Log::default();
    let relay = relay(&hub, &log);
    let (first, second) = (log.commit(), log.commit());
    // The second commit is announced first, and the first twice.
    relay.publish(second.0, &second.1);
    relay.publish(first.0, &first.1);
    relay.publish(first.0, &first.1);
    assert_eq!(next_text(&mut client).await, event(1));
    assert_eq!(next_text(&mut client).await, event(2));
    assert_quiet(&mut client).await;
    assert_eq!(relay.stats().delivered, 2);
}

#[tokio::test]
async fn a_gap_is_filled_from_the_log_at_once() {
    let (hub, addr) = serve(Config::default()).await;
    let mut client = connect(addr, "/", ocha_realtime::OCHA_WELCOME).await;
    let log = Log::default();
    let relay = relay(&hub, &log);
    // Events 1 and 2 were committed on a node that died before telling anyone.
    log.commit();
    log.commit();
    let third = log.commit();
    relay.publish(third.0, &third.1);
    for id in 1..=3 {
        assert_eq!(next_text(&mut client).await, event(id));
    }
    assert_eq!(relay.stats().from_log, 2);
    assert_quiet(&mut client).await;
}

#[tokio::test]
async fn unannounced_events_are_read_from_the_log_every_poll_interval() {
    let (hub, addr) = serve(Config::default()).await;
    let mut client = connect(addr, "/", ocha_realtime::OCHA_WELCOME).await;
    let log = Log::default();
    let _relay = Relay::builder(hub.clone(), log.clone())
        .poll_interval(Duration::from_millis(50))
        .start();
    log.commit();
    log.commit();
    assert_eq!(next_text(&mut client).await, event(1));
    assert_eq!(next_text(&mut client).await, event(2));
    assert_eq!(hub.last_event_id(), EventId::new(2));
}

#[tokio::test]
async fn a_relay_carries_on_from_the_restored_history() {
    let (hub, addr) = serve(Config::default()).await;
    let log = Log::default();
    for _ in 0..3 {
        log.commit();
    }
    hub.restore_history(EventId::new(3), []);
    let mut client = connect(addr, "/", ocha_realtime::OCHA_WELCOME).await;
    let relay = relay(&hub, &log);
    let fourth = log.commit();
    relay.publish(fourth.0, &fourth.1);
    assert_eq!(next_text(&mut client).await, event(4));
    assert_quiet(&mut client).await;
}

#[tokio::test]
async fn the_observer_sees_every_delivered_event_once_in_id_order() {
    let (hub, addr) = serve(Config::default()).await;
    let mut client = connect(addr, "/", ocha_realtime::OCHA_WELCOME).await;
    let log = Log::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let observed = seen.clone();
    let relay = Relay::builder(hub.clone(), log.clone())
        .poll_interval(Duration::from_secs(3600))
        .on_deliver(move |id, event| observed.lock().unwrap().push((id.get(), event.to_owned())))
        .start();
    // Event 1 comes from the log (a gap), 2 from its commit, announced twice.
    log.commit();
    let second = log.commit();
    relay.publish(second.0, &second.1);
    relay.publish(second.0, &second.1);
    for id in 1..=2 {
        assert_eq!(next_text(&mut client).await, event(id));
    }
    assert_quiet(&mut client).await;
    assert_eq!(*seen.lock().unwrap(), [(1, event(1)), (2, event(2))]);
}
