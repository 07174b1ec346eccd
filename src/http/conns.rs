//! The open connections: each one's header read timeout, and the shutdown's drain and cut.
//!
//! hyper's own header read timeout arms a timer for every request head, which on a
//! keep-alive connection means one timer registered and removed per request: measured here
//! at about 0.3 µs of CPU per request, a sixth of everything verve adds to a bare hyper
//! server. A shared `watch` for the shutdown costs a lock on every poll of every connection.
//! Instead, each connection gets an [`Activity`] its service bumps (a plain store: only the
//! connection's task writes it), and one sweeper looks at all of them every quarter of the
//! timeout: a connection that began no request and finished none for four sweeps in a row,
//! and has none in service, is closed. A head must so arrive within the timeout, or at most
//! a quarter more, of the previous answer (or of the connection's start) — the same rule as
//! hyper's, which also closes an idle keep-alive connection. The shutdown's phases reach the connections as
//! a flag each reads when polled, and a wake-up of every registered task when it changes.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;

/// What a connection's service tells the sweeper.
#[derive(Default)]
pub struct Activity {
    /// Request heads parsed so far.
    heads: AtomicU64,
    /// A request waits for the store (its answer is not ready yet).
    in_service: AtomicBool,
    /// Set by the sweeper: the connection is to be closed.
    expired: AtomicBool,
    /// The connection's task, woken to close it.
    waker: Mutex<Option<Waker>>,
}

impl Activity {
    /// A request head was parsed. Only the connection's own task calls this, so a load and a
    /// store do (no read-modify-write on the request path).
    pub fn head(&self) {
        let heads = self.heads.load(Ordering::Relaxed);
        self.heads.store(heads.wrapping_add(1), Ordering::Relaxed);
    }

    /// A request's answer is (`true`) or is no longer (`false`) waited for. Its end counts
    /// as activity, like a head: the next head's time runs from the answer, not from the
    /// last sweep that found the request in service. Only the connection's task calls this.
    pub fn serving(&self, in_service: bool) {
        if !in_service {
            self.head();
        }
        self.in_service.store(in_service, Ordering::Relaxed);
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.lock().as_ref() {
            waker.wake_by_ref();
        }
    }
}

const SERVING: u8 = 0;
const DRAINING: u8 = 1;
const CUT: u8 = 2;

/// Idle sweeps in a row after which a connection is closed: the timeout is four sweeps.
const IDLE_SWEEPS: u8 = 4;

/// Every open connection of a listener.
pub struct Connections {
    /// [`SERVING`], then [`DRAINING`] (each connection finishes the request it serves and
    /// closes), then [`CUT`] (every connection still open is dropped).
    phase: AtomicU8,
    open: Mutex<HashMap<u64, Watched>>,
    next: AtomicU64,
    timeout: Duration,
}

/// The sweeper's view of one connection.
struct Watched {
    activity: Arc<Activity>,
    /// `heads` at the previous sweep.
    heads: u64,
    /// Sweeps in a row that found no new head and no request in service.
    idle: u8,
}

impl Connections {
    /// Connections whose heads must arrive within `timeout`.
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            phase: AtomicU8::new(SERVING),
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            timeout,
        })
    }

    /// Watches a new connection: its service bumps `activity`, and `connection` (hyper's)
    /// is served through the returned future.
    pub fn watch<C: Graceful>(
        self: &Arc<Self>,
        connection: C,
        activity: Arc<Activity>,
    ) -> Watch<C> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.lock().insert(
            id,
            Watched {
                activity: Arc::clone(&activity),
                heads: u64::MAX,
                idle: 0,
            },
        );
        Watch {
            connection,
            activity,
            connections: Arc::clone(self),
            id,
            waker: None,
            draining: false,
        }
    }

    /// Closes the connections idle for the timeout, every quarter of it, until dropped.
    pub async fn sweep(self: Arc<Self>) {
        let period = (self.timeout / u32::from(IDLE_SWEEPS)).max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let mut open = self.open.lock();
            for watched in open.values_mut() {
                let heads = watched.activity.heads.load(Ordering::Relaxed);
                let busy = watched.activity.in_service.load(Ordering::Relaxed);
                if heads != watched.heads || busy {
                    watched.heads = heads;
                    watched.idle = 0;
                    continue;
                }
                watched.idle = watched.idle.saturating_add(1);
                if watched.idle == IDLE_SWEEPS {
                    watched.activity.expired.store(true, Ordering::Release);
                    watched.activity.wake();
                }
            }
        }
    }

    /// Every connection finishes the request it is serving and closes; idle ones close now.
    pub fn drain(&self) {
        self.enter(DRAINING);
    }

    /// Every connection still open is dropped: its socket closes, whatever it is doing.
    pub fn cut(&self) {
        self.enter(CUT);
    }

    fn enter(&self, phase: u8) {
        self.phase.store(phase, Ordering::Release);
        for watched in self.open.lock().values() {
            watched.activity.wake();
        }
    }
}

/// hyper's connection, which can be told to finish its request and close.
pub trait Graceful: Future + Unpin {
    fn graceful_shutdown(&mut self);
}

impl<I, S> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(&mut self) {
        Pin::new(self).graceful_shutdown();
    }
}

/// A connection served under [`Connections`]: ends when hyper's does, when it is expired, or
/// at the cut.
pub struct Watch<C> {
    connection: C,
    activity: Arc<Activity>,
    connections: Arc<Connections>,
    id: u64,
    /// The waker registered in `activity` (a task's waker does not change between polls, so
    /// it is registered once).
    waker: Option<Waker>,
    draining: bool,
}

impl<C: Graceful> Future for Watch<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.waker.as_ref().is_none_or(|w| !w.will_wake(cx.waker())) {
            // Under the lock the sweeper and the phase changes wake through: registered
            // before the checks below, a change made after them still wakes this task.
            *this.activity.waker.lock() = Some(cx.waker().clone());
            this.waker = Some(cx.waker().clone());
        }
        if this.activity.expired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        match this.connections.phase.load(Ordering::Acquire) {
            SERVING => {}
            DRAINING if !this.draining => {
                this.draining = true;
                this.connection.graceful_shutdown();
            }
            DRAINING => {}
            _ => return Poll::Ready(()),
        }
        Pin::new(&mut this.connection).poll(cx).map(|_| ())
    }
}

impl<C> Drop for Watch<C> {
    fn drop(&mut self) {
        self.connections.open.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that never ends by itself.
    struct Forever;

    impl Future for Forever {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    impl Graceful for Forever {
        fn graceful_shutdown(&mut self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_timeout_and_a_busy_one_is_not() {
        let connections = Connections::new(Duration::from_millis(400));
        let sweeper = tokio::spawn(Arc::clone(&connections).sweep());
        let (idle, busy) = (Arc::new(Activity::default()), Arc::new(Activity::default()));
        let idle_conn = tokio::spawn(connections.watch(Forever, Arc::clone(&idle)));
        let busy_conn = tokio::spawn(connections.watch(Forever, Arc::clone(&busy)));
        // The busy one begins a request every 100 ms, then waits 2 s for one answer.
        for _ in 0..10 {
            busy.head();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(idle_conn.is_finished(), "idle connection kept");
        busy.head();
        busy.serving(true);
        // Answered 50 ms after a sweep that found it in service: the timeout runs from the
        // answer (a review found it ran from that sweep, closing the connection 350 ms after
        // the answer).
        tokio::time::sleep(Duration::from_millis(2050)).await;
        assert!(!busy_conn.is_finished(), "a request in service was cut");
        busy.serving(false);
        tokio::time::sleep(Duration::from_millis(390)).await;
        assert!(
            !busy_conn.is_finished(),
            "closed before the timeout after its answer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(busy_conn.is_finished());
        sweeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_time_before_closing_is_the_timeout_or_a_quarter_more() {
        let connections = Connections::new(Duration::from_millis(400));
        let sweeper = tokio::spawn(Arc::clone(&connections).sweep());
        tokio::time::sleep(Duration::from_millis(37)).await;
        let activity = Arc::new(Activity::default());
        let started = tokio::time::Instant::now();
        connections.watch(Forever, Arc::clone(&activity)).await;
        let after = started.elapsed();
        assert!(
            after >= Duration::from_millis(400) && after <= Duration::from_millis(500),
            "closed after {after:?}"
        );
        sweeper.abort();
    }

    #[tokio::test]
    async fn draining_tells_each_connection_once_and_the_cut_ends_them() {
        let connections = Connections::new(Duration::from_secs(60));
        let (told, mut telling) = tokio::sync::mpsc::unbounded_channel();
        /// Reports each graceful shutdown.
        struct Reporting(tokio::sync::mpsc::UnboundedSender<()>);
        impl Future for Reporting {
            type Output = ();
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                Poll::Pending
            }
        }
        impl Graceful for Reporting {
            fn graceful_shutdown(&mut self) {
                let _ = self.0.send(());
            }
        }
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let watch =
                    connections.watch(Reporting(told.clone()), Arc::new(Activity::default()));
                tokio::spawn(watch)
            })
            .collect();
        tokio::task::yield_now().await;
        connections.drain();
        for _ in 0..3 {
            telling.recv().await.unwrap();
        }
        connections.drain();
        tokio::task::yield_now().await;
        assert!(telling.try_recv().is_err(), "told twice");
        assert!(tasks.iter().all(|t| !t.is_finished()));
        connections.cut();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(
            connections.open.lock().is_empty(),
            "a closed connection stays registered"
        );
    }
}
