//! The product database as the hub's event log: every committed change
//! writes its event in the same transaction (see [`Store::insert`]), and a
//! [`Relay`] hands those events to the hub, once each and in id order,
//! whichever node committed them.
//!
//! At start the hub's history is restored from the log, so clients resume
//! across a restart, and the log is pruned to `EVENT_HISTORY` events and
//! `EVENT_HISTORY_SECS` seconds now and then.

use std::time::{Duration, SystemTime};

use ocha_realtime::{EventId, EventLog, Frame, Hub, Relay};

use crate::config::EventSettings;
use crate::server::StartError;
use crate::store::{Store, StoreError, StoredEvent};

/// The Redis pub/sub channel nodes share events on.
pub const REDIS_CHANNEL: &str = "ocha:events";

/// How often the log is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl EventLog for Store {
    type Error = StoreError;

    async fn events_after(
        &self,
        after: EventId,
        limit: usize,
    ) -> Result<Vec<(EventId, String)>, StoreError> {
        let events = Store::events_after(self, after.get(), limit).await?;
        Ok(events
            .into_iter()
            .map(|event| (EventId::new(event.id), event.json))
            .collect())
    }
}

/// Restores `hub`'s history from the log and starts the relay that feeds
/// it, sharing events over Redis if `settings` name a server, and the task
/// that prunes the log. `on_deliver` sees each event the relay hands to the
/// hub, as [`RelayBuilder::on_deliver`](ocha_realtime::RelayBuilder::on_deliver)
/// says.
///
/// # Errors
///
/// When the log cannot be read, or `REDIS_URL` is not a Redis URL.
pub async fn start(
    store: &Store,
    hub: &Hub,
    settings: &EventSettings,
    on_deliver: impl Fn(EventId, &str) + Send + Sync + 'static,
) -> Result<Relay<Store>, StartError> {
    let newer_than = SystemTime::now()
        .checked_sub(settings.history_age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let (last, events) = store.latest_events(settings.history, newer_than).await?;
    let kept = events.len();
    hub.restore_history(EventId::new(last), events.into_iter().map(history_entry));
    tracing::info!(last_event_id = last, kept, "event history restored");
    let mut relay = Relay::builder(hub.clone(), store.clone())
        .poll_interval(settings.poll_interval)
        .on_deliver(on_deliver);
    if let Some(url) = &settings.redis_url {
        relay = relay.redis(url, REDIS_CHANNEL).map_err(StartError::Redis)?;
    }
    tokio::spawn(prune(store.clone(), settings.clone()));
    Ok(relay.start())
}

fn history_entry(event: StoredEvent) -> (EventId, SystemTime, Frame) {
    (
        EventId::new(event.id),
        event.published_at,
        Frame::text(&event.json),
    )
}

/// Keeps the log within the history bounds, for as long as the store is
/// open.
async fn prune(store: Store, settings: EventSettings) {
    loop {
        let older_than = SystemTime::now()
            .checked_sub(settings.history_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match store.prune_events(settings.history, older_than).await {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "event log pruned"),
            Err(StoreError::Closed) => return,
            Err(error) => tracing::warn!(%error, "cannot prune the event log"),
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}
