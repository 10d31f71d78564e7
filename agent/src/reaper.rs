//! The reaper: notices within milliseconds when a client process exits,
//! however it exits (normal exit, SIGKILL, or a zombie nobody has reaped), so
//! the agent can release what it held.
//!
//! One pidfd per client process, all in one epoll set watched by a dedicated
//! thread (rustix's epoll is safe; tokio's `AsyncFd` now needs `unsafe`). A
//! pidfd becomes readable when its process exits. The thread sends the exited
//! client's id to an async task that calls [`Agent::process_exited`]. An
//! eventfd in the same set wakes the thread to stop.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, eventfd};
use tokio::sync::mpsc;

use crate::core::ClientId;
use crate::service::Agent;
use crate::shutdown::Shutdown;

/// The key of the stop eventfd in the epoll set; client ids start at 1.
const STOP: u64 = 0;

/// Watches client processes. Cheap to share.
#[derive(Debug)]
pub struct Reaper {
    epoll: OwnedFd,
    stop: OwnedFd,
    /// The pidfds being watched, kept open until their process is handled.
    watched: Mutex<HashMap<u64, OwnedFd>>,
}

impl Reaper {
    /// Starts the watcher thread and the task that handles exits; both end
    /// at shutdown.
    ///
    /// # Errors
    /// The epoll set, eventfd or thread cannot be created.
    pub fn start(agent: Arc<Agent>, shutdown: Shutdown) -> io::Result<Arc<Reaper>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let stop = eventfd(0, EventfdFlags::CLOEXEC)?;
        epoll::add(&epoll, &stop, EventData::new_u64(STOP), EventFlags::IN)?;
        let reaper = Arc::new(Reaper {
            epoll,
            stop,
            watched: Mutex::new(HashMap::new()),
        });
        let (exits, mut exited) = mpsc::unbounded_channel();
        let watcher = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || watcher.watch(&exits))?;
        let stopper = reaper.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.wait() => break,
                    client = exited.recv() => match client {
                        Some(client) => agent.process_exited(client).await,
                        None => break,
                    },
                }
            }
            stopper.wake_to_stop();
        });
        Ok(reaper)
    }

    /// Watches `pidfd` for the exit of `client`'s process.
    ///
    /// # Errors
    /// The pidfd cannot be added to the epoll set.
    pub fn watch_process(&self, client: ClientId, pidfd: OwnedFd) -> io::Result<()> {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        epoll::add(
            &self.epoll,
            &pidfd,
            EventData::new_u64(client.0),
            EventFlags::IN,
        )?;
        watched.insert(client.0, pidfd);
        Ok(())
    }

    /// The watcher thread: forwards each exit, closing its pidfd.
    fn watch(&self, exits: &mpsc::UnboundedSender<ClientId>) {
        let mut events = Vec::with_capacity(64);
        loop {
            if let Err(error) = epoll::wait(&self.epoll, spare_capacity(&mut events), None) {
                if error == rustix::io::Errno::INTR {
                    continue;
                }
                tracing::error!(cause = %error, "the reaper cannot wait for process exits");
                return;
            }
            for event in events.drain(..) {
                let key = event.data.u64();
                if key == STOP {
                    return;
                }
                let pidfd = self
                    .watched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                if let Some(pidfd) = pidfd {
                    // Closing the pidfd also removes it from the epoll set.
                    let _ = epoll::delete(&self.epoll, pidfd.as_fd());
                }
                if exits.send(ClientId(key)).is_err() {
                    return;
                }
            }
        }
    }

    fn wake_to_stop(&self) {
        if let Err(error) = rustix::io::write(&self.stop, &1u64.to_ne_bytes()) {
            tracing::warn!(cause = %error, "cannot stop the reaper thread");
        }
    }
}
