//! Named groups of connections, for fan-out to part of a hub and for
//! presence: the channels, and each user's connections.
//!
//! Every group has a lock of its own, so publishing to one group holds up
//! nobody outside it, and costs as much as the group has members. A group
//! exists while it has members: the last one to leave removes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::Waker;

use crate::outbox::{Outbox, Pushed};
use crate::registry::lock;
use crate::wire::Wire;
use crate::ConnectionId;

/// One group's members, and how many connections each user has in it.
#[derive(Debug, Default)]
pub(crate) struct Group {
    members: HashMap<ConnectionId, Arc<Outbox>>,
    users: HashMap<Arc<str>, usize>,
    /// Emptied and taken out of [`Groups`]: a joiner holding it must look
    /// the name up again.
    removed: bool,
}

impl Group {
    /// Queues `wire` on every member; see [`Outbox::push`].
    pub(crate) fn push(&self, wire: &Wire, capacity: usize, wake: &mut Vec<Waker>) -> (usize, u64) {
        let (mut reached, mut overflowed) = (0, 0);
        for outbox in self.members.values() {
            match outbox.push_wire(wire, capacity, true, wake) {
                Pushed::Taken => reached += 1,
                Pushed::Overflowed => overflowed += 1,
                Pushed::Refused => {}
            }
        }
        (reached, overflowed)
    }

    pub(crate) fn outboxes(&self) -> impl Iterator<Item = &Arc<Outbox>> {
        self.members.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// Each user with connections in the group, and how many.
    pub(crate) fn users(&self) -> Vec<(String, usize)> {
        self.users
            .iter()
            .map(|(user, &count)| (user.to_string(), count))
            .collect()
    }
}

/// Groups by name.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    by_name: Mutex<HashMap<Arc<str>, Arc<Mutex<Group>>>>,
}

impl Groups {
    /// The group called `name`, if it has members.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Mutex<Group>>> {
        lock(&self.by_name).get(name).cloned()
    }

    /// How many groups have members.
    pub(crate) fn count(&self) -> usize {
        lock(&self.by_name).len()
    }

    /// Adds a connection to the group `name`, creating it if needed; false
    /// if it was a member already.
    ///
    /// Never holds the name index while it waits for a group, which may be
    /// in the middle of a fan-out.
    pub(crate) fn join(
        &self,
        name: &Arc<str>,
        id: ConnectionId,
        outbox: &Arc<Outbox>,
        user: Option<&Arc<str>>,
    ) -> bool {
        loop {
            let group = lock(&self.by_name).entry(name.clone()).or_default().clone();
            let mut group = lock(&group);
            if group.removed {
                continue;
            }
            if group.members.insert(id, outbox.clone()).is_some() {
                return false;
            }
            if let Some(user) = user {
                *group.users.entry(user.clone()).or_default() += 1;
            }
            return true;
        }
    }

    /// Removes a connection from the group `name`, and the group once it is
    /// empty; false if it was not a member.
    pub(crate) fn leave(&self, name: &str, id: ConnectionId, user: Option<&Arc<str>>) -> bool {
        let Some(group) = self.get(name) else {
            return false;
        };
        let mut locked = lock(&group);
        if locked.members.remove(&id).is_none() {
            return false;
        }
        if let Some(user) = user {
            if let Some(count) = locked.users.get_mut(user) {
                *count -= 1;
                if *count == 0 {
                    locked.users.remove(user);
                }
            }
        }
        if locked.members.is_empty() {
            locked.removed = true;
            let mut by_name = lock(&self.by_name);
            if by_name
                .get(name)
                .is_some_and(|current| Arc::ptr_eq(current, &group))
            {
                by_name.remove(name);
            }
        }
        true
    }
}
