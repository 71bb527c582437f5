//! Background threads started on first use.
//!
//! pingora's daemon mode (`-d`) forks after the server is built, and only the forking thread
//! survives a fork: a thread started while building the server would silently be gone in the
//! daemon. A [`LazyThread`] is started by the first piece of work handed to it, which always
//! happens in the process that serves.

use std::sync::{Mutex, OnceLock};

/// The body of a background thread.
type Body = Box<dyn FnOnce() + Send + 'static>;

/// A named thread that starts when [`LazyThread::ensure_started`] is first called.
pub struct LazyThread {
    name: &'static str,
    body: Mutex<Option<Body>>,
    started: OnceLock<()>,
}

impl LazyThread {
    /// A thread called `name` that will run `body`.
    pub fn new(name: &'static str, body: impl FnOnce() + Send + 'static) -> LazyThread {
        LazyThread {
            name,
            body: Mutex::new(Some(Box::new(body))),
            started: OnceLock::new(),
        }
    }

    /// Starts the thread unless it runs already (one atomic load once started).
    pub fn ensure_started(&self) {
        self.started.get_or_init(|| {
            let body = self.body.lock().unwrap_or_else(|e| e.into_inner()).take();
            let Some(body) = body else { return };
            if let Err(error) = std::thread::Builder::new().name(self.name.into()).spawn(body) {
                tracing::error!(%error, thread = self.name, "cannot start background thread");
            }
        });
    }

    /// Whether the thread was started (work was handed to it).
    pub fn is_started(&self) -> bool {
        self.started.get().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_once_on_first_use() {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = LazyThread::new("test", move || {
            tx.send(std::thread::current().name().map(String::from)).unwrap()
        });
        assert!(rx.try_recv().is_err(), "started before first use");
        thread.ensure_started();
        thread.ensure_started();
        let name = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(name.as_deref(), Some("test"));
        assert!(rx.recv_timeout(std::time::Duration::from_millis(50)).is_err());
    }
}
