//! One shutdown signal for every task: triggered once (SIGTERM, SIGINT, or a
//! fatal error), observed by any number of waiters, including ones that start
//! waiting after it fired.

use tokio::sync::watch;

/// Fires the shutdown.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Waits for the shutdown; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger and waiter.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Starts the shutdown; idempotent.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once the shutdown has fired (or its trigger was dropped).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|fired| *fired).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_waiters_see_an_earlier_shutdown() {
        let (trigger, sut) = channel();
        trigger.fire();
        tokio::time::timeout(std::time::Duration::from_secs(5), sut.wait())
            .await
            .expect("wait returns after fire");
    }
}
