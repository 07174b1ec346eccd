//! Lanes: the threads that serve connections in fleet mode, one single-threaded tokio runtime
//! each, every one with its own Redis connection and `SADD` batcher.
//!
//! An id not seen locally waits for a round of `SADD`s. On a shared multi-threaded runtime the
//! round's answer wakes its requests' connection tasks on whichever worker is free, and the
//! workers park and wake each other around every round: measured on 2 cores, that cost a
//! quarter of the instance's CPU. In a lane a request, its round and its answer stay on one
//! thread; the lane sleeps in `epoll` between rounds. Lanes own only what runs on them —
//! connections and batchers; windows, reports and callbacks stay on the main runtime.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::watch;

thread_local! {
    /// The index of the lane running on this thread, if any.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The lane this code runs on; `None` off the lanes (the main runtime, tests).
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// One lane's runtime and how many connections it serves.
struct Lane {
    handle: Handle,
    /// Open connections on this lane: a new connection goes to the least loaded lane.
    connections: Arc<AtomicUsize>,
}

/// The lanes; stopped (their tasks dropped) by [`Lanes::stop`] or on drop.
pub struct Lanes {
    lanes: Vec<Lane>,
    /// Set to true to stop every lane.
    stop: watch::Sender<bool>,
}

impl Lanes {
    /// Starts `count` lanes (at least one), named `verve-lane-<i>`.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let mut lanes = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("verve-lane-{index}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(index)));
                    runtime.block_on(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    });
                })?;
            lanes.push(Lane {
                handle,
                connections: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Self { lanes, stop })
    }

    /// How many lanes there are.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Never true: there is at least one lane.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Runs `task` on lane `index` (modulo the lane count).
    pub fn spawn<F>(&self, index: usize, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.lanes[index % self.lanes.len()].handle.spawn(task)
    }

    /// Runs a connection's `task` on the lane serving the fewest connections; `task` builds
    /// its future there (a socket must be registered with the runtime that polls it).
    pub fn spawn_connection<F, Fut>(&self, task: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let lane = self
            .lanes
            .iter()
            .min_by_key(|lane| lane.connections.load(Ordering::Relaxed))
            .unwrap_or(&self.lanes[0]);
        let connections = Arc::clone(&lane.connections);
        connections.fetch_add(1, Ordering::Relaxed);
        lane.handle.spawn(async move {
            let _open = Open(connections);
            task().await;
        });
    }

    /// Stops every lane: tasks still on them are dropped.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A connection's place in its lane's count, given back when it ends (or is dropped).
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_their_lane_and_connections_spread_evenly() {
        let lanes = Lanes::start(2).unwrap();
        assert_eq!(lanes.len(), 2);
        assert_eq!(current(), None);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for index in 0..2 {
            let on = runtime.block_on(lanes.spawn(index, async { current() }));
            assert_eq!(on.unwrap(), Some(index));
        }
        // Connections that stay open: each new one goes to the lane with fewer.
        let (placed, mut where_placed) = tokio::sync::mpsc::unbounded_channel();
        let (close, closed) = watch::channel(false);
        for _ in 0..6 {
            let (placed, mut closed) = (placed.clone(), closed.clone());
            lanes.spawn_connection(move || async move {
                let _ = placed.send(current());
                let _ = closed.wait_for(|c| *c).await;
            });
            // Placement counts a connection before its task runs; wait for it anyway so
            // that the order is the one asserted.
            runtime.block_on(async { where_placed.recv().await.unwrap() });
        }
        let open: Vec<usize> = lanes
            .lanes
            .iter()
            .map(|l| l.connections.load(Ordering::Relaxed))
            .collect();
        assert_eq!(open, [3, 3]);
        close.send(true).unwrap();
        for _ in 0..200 {
            if lanes
                .lanes
                .iter()
                .all(|l| l.connections.load(Ordering::Relaxed) == 0)
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            lanes
                .lanes
                .iter()
                .all(|l| l.connections.load(Ordering::Relaxed) == 0),
            "closed connections are given back"
        );
    }

    #[test]
    fn stopping_drops_the_tasks_left_on_the_lanes() {
        let lanes = Lanes::start(1).unwrap();
        let (dropped, is_dropped) = std::sync::mpsc::channel::<()>();
        let task = lanes.spawn(0, async move {
            let _guard = dropped;
            std::future::pending::<()>().await;
        });
        drop(task); // detached: only stopping the lane ends it
        lanes.stop();
        // The sender is dropped with the task: the receiver sees the channel close.
        assert_eq!(
            is_dropped.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
