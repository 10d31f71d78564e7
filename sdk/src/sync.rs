//! [`Semaphore`] and [`Event`]: process-shared synchronisation in segments
//! the agent creates, waited on with futexes in the segment (no system call
//! when nobody sleeps), and their builders.

use std::sync::Arc;
use std::time::Duration;

use ipcplane_proto::v1;
use ipcplane_shm::{event as shm_event, semaphore as shm_semaphore};

use crate::client::{Client, TypedOptions, typed_builder_setters};
use crate::connection::{Attachment, Granted};
use crate::error::Error;
use crate::segment::{SegmentId, SegmentInfo, SegmentKind};

/// Describes a semaphore to create; from [`Client::semaphore_builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `create` is called"]
pub struct SemaphoreBuilder<'c> {
    options: TypedOptions<'c>,
    initial: u32,
}

impl<'c> SemaphoreBuilder<'c> {
    pub(crate) fn new(client: &'c Client, name: String) -> Self {
        Self {
            options: TypedOptions::new(client, name),
            initial: 0,
        }
    }

    /// Units available at creation (default 0).
    pub fn initial(mut self, units: u32) -> Self {
        self.initial = units;
        self
    }

    typed_builder_setters!();

    /// Asks the agent to create the semaphore, and maps it.
    ///
    /// # Errors
    /// The agent's refusal (as for
    /// [`SegmentBuilder::create`](crate::SegmentBuilder::create)) or a
    /// connection error.
    pub fn create(self) -> Result<Semaphore, Error> {
        let layout = v1::create_segment::Layout::Semaphore(v1::SemaphoreSpec {
            initial_value: self.initial,
        });
        Semaphore::new(self.options.create(layout, SegmentKind::Semaphore)?)
    }
}

/// A counting semaphore in a segment granted by the agent.
///
/// Acquire and release are one compare-and-swap when uncontended; a blocked
/// acquire spins briefly, then sleeps on a futex in the segment. There is no
/// fairness between waiters, and no undo when a holder dies: the count is
/// what the processes make of it. Handles are `Send` and `Sync`; share one
/// between threads through `&` or `Arc`. Dropping it detaches.
#[derive(Debug)]
pub struct Semaphore {
    inner: shm_semaphore::Semaphore,
    handle: Handle,
}

impl Semaphore {
    pub(crate) fn new(granted: Granted) -> Result<Self, Error> {
        let (handle, mapping) = Handle::new(granted);
        let inner =
            shm_semaphore::Semaphore::from_mapping(mapping).map_err(Error::SemaphoreLayout)?;
        Ok(Self { inner, handle })
    }

    /// The semaphore's segment id.
    pub fn id(&self) -> SegmentId {
        self.handle.info.id
    }

    /// The segment as the agent recorded it when granting it.
    pub fn info(&self) -> &SegmentInfo {
        &self.handle.info
    }

    /// Takes one unit if one is available, without waiting.
    pub fn try_acquire(&self) -> bool {
        self.inner.try_acquire()
    }

    /// Takes one unit, waiting up to `timeout` (`None`: forever).
    ///
    /// # Errors
    /// [`Error::Semaphore`] with [`SemaphoreError::Timeout`](shm_semaphore::SemaphoreError::Timeout),
    /// or if the thread cannot sleep.
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.inner.acquire(timeout).map_err(Error::Semaphore)
    }

    /// Returns one unit, waking a sleeper if there is one.
    ///
    /// # Errors
    /// [`Error::Semaphore`] if the count is already `u32::MAX`.
    pub fn release(&self) -> Result<(), Error> {
        self.inner.release().map_err(Error::Semaphore)
    }

    /// Returns `n` units at once; nothing if the count would pass
    /// `u32::MAX`.
    ///
    /// # Errors
    /// [`Error::Semaphore`] on overflow.
    pub fn release_n(&self, n: u32) -> Result<(), Error> {
        self.inner.release_n(n).map_err(Error::Semaphore)
    }

    /// The units available now: a snapshot, for display.
    pub fn value(&self) -> u32 {
        self.inner.value()
    }
}

/// Describes an event to create; from [`Client::event_builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `create` is called"]
pub struct EventBuilder<'c> {
    options: TypedOptions<'c>,
}

impl<'c> EventBuilder<'c> {
    pub(crate) fn new(client: &'c Client, name: String) -> Self {
        Self {
            options: TypedOptions::new(client, name),
        }
    }

    typed_builder_setters!();

    /// Asks the agent to create the event, and maps it.
    ///
    /// # Errors
    /// The agent's refusal (as for
    /// [`SegmentBuilder::create`](crate::SegmentBuilder::create)) or a
    /// connection error.
    pub fn create(self) -> Result<Event, Error> {
        let layout = v1::create_segment::Layout::Event(v1::EventSpec {});
        Event::new(self.options.create(layout, SegmentKind::Event)?)
    }
}

/// An event in a segment granted by the agent: processes wait for the next
/// notification and notify one or all of them. A notification is not
/// stored: to wait for a condition without missing the notification that
/// comes between checking it and waiting, read [`sequence`](Self::sequence)
/// first and pass it to [`wait_since`](Self::wait_since). Handles are `Send`
/// and `Sync`. Dropping it detaches.
#[derive(Debug)]
pub struct Event {
    inner: shm_event::Event,
    handle: Handle,
}

impl Event {
    pub(crate) fn new(granted: Granted) -> Result<Self, Error> {
        let (handle, mapping) = Handle::new(granted);
        let inner = shm_event::Event::from_mapping(mapping).map_err(Error::EventLayout)?;
        Ok(Self { inner, handle })
    }

    /// The event's segment id.
    pub fn id(&self) -> SegmentId {
        self.handle.info.id
    }

    /// The segment as the agent recorded it when granting it.
    pub fn info(&self) -> &SegmentInfo {
        &self.handle.info
    }

    /// Waits up to `timeout` (`None`: forever) for a notification made after
    /// this call began.
    ///
    /// # Errors
    /// [`Error::Event`] with [`EventError::Timeout`](shm_event::EventError::Timeout),
    /// or if the thread cannot sleep.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.inner.wait(timeout).map_err(Error::Event)
    }

    /// The notification count now, for [`wait_since`](Self::wait_since).
    pub fn sequence(&self) -> u32 {
        self.inner.sequence()
    }

    /// Waits up to `timeout` until a notification came after `seen` (an
    /// earlier [`sequence`](Self::sequence)); at once if one already did.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn wait_since(&self, seen: u32, timeout: Option<Duration>) -> Result<(), Error> {
        self.inner.wait_since(seen, timeout).map_err(Error::Event)
    }

    /// Wakes one waiter (at least one: a waiter not yet asleep returns too).
    pub fn notify_one(&self) {
        self.inner.notify_one();
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.inner.notify_all();
    }
}

/// What a semaphore or event holds besides its primitive: its record and
/// its attachment, released on drop (after the primitive's mapping goes).
#[derive(Debug)]
struct Handle {
    info: SegmentInfo,
    _attachment: Attachment,
}

impl Handle {
    /// Splits a grant into the handle and the mapping for the primitive.
    fn new(granted: Granted) -> (Self, Arc<ipcplane_shm::mapping::Mapping>) {
        let Granted {
            info,
            mapping,
            attachment,
            ..
        } = granted;
        (
            Self {
                info,
                _attachment: attachment,
            },
            Arc::new(mapping),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semaphores_and_events_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Semaphore>();
        assert_send_sync::<Event>();
    }
}
