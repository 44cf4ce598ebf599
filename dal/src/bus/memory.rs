//! In-process bus: each consumer group gets a bounded channel; publishing waits for room,
//! so a slow subscriber slows ingestion down instead of growing memory. With no subscriber,
//! publishing is a no-op: in embedded mode the runner can always re-derive notifications
//! from the catalog (its cursor is the committed segment sequence).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Bus, Delivered, DeliveryTag, Subscription};
use crate::update::UpdateNotification;
use crate::{Error, Result};

/// In-process notification bus.
#[derive(Debug)]
pub struct MemoryBus {
    capacity: usize,
    groups: Mutex<HashMap<String, mpsc::Sender<Delivered>>>,
    /// Next offset handed out; one sequence for the whole bus (a single partition).
    next_offset: Mutex<i64>,
}

impl MemoryBus {
    /// A bus whose per-group queues hold at most `capacity` notifications.
    pub fn new(capacity: usize) -> Self {
        MemoryBus {
            capacity: capacity.max(1),
            groups: Mutex::new(HashMap::new()),
            next_offset: Mutex::new(0),
        }
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new(65_536)
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, notes: &[UpdateNotification]) -> Result<()> {
        let senders: Vec<_> = {
            let mut g = self.groups.lock().expect("bus lock");
            g.retain(|_, s| !s.is_closed());
            g.values().cloned().collect()
        };
        let first = {
            let mut n = self.next_offset.lock().expect("bus lock");
            let first = *n;
            *n += notes.len() as i64;
            first
        };
        for tx in senders {
            for (i, note) in notes.iter().enumerate() {
                let d = Delivered {
                    note: note.clone(),
                    tag: DeliveryTag {
                        partition: 0,
                        offset: first + i as i64,
                    },
                };
                // A closed receiver just left the group; the others still get everything.
                if tx.send(d).await.is_err() {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn subscribe(&self, group: &str) -> Result<Box<dyn Subscription>> {
        let (tx, rx) = mpsc::channel(self.capacity);
        let mut g = self.groups.lock().expect("bus lock");
        if g.get(group).is_some_and(|s| !s.is_closed()) {
            return Err(Error::Bus {
                message: format!("group {group:?} already has a member in this process"),
                transient: false,
                source: None,
            });
        }
        g.insert(group.to_owned(), tx);
        Ok(Box::new(MemorySubscription { rx }))
    }

    fn describe(&self) -> String {
        "in-process bus".into()
    }
}

struct MemorySubscription {
    rx: mpsc::Receiver<Delivered>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn recv(&mut self, max: usize) -> Result<Vec<Delivered>> {
        let mut out = Vec::new();
        match self.rx.recv_many(&mut out, max.max(1)).await {
            0 => Err(Error::Bus {
                message: "bus closed".into(),
                transient: false,
                source: None,
            }),
            _ => Ok(out),
        }
    }

    async fn commit(&mut self, _tags: &[DeliveryTag]) -> Result<()> {
        Ok(())
    }
}
