//! The aggregates endpoint's threads: `database.query_threads` of them, each with its own
//! connection (made when first needed, made again after a failure), taking requests from
//! one bounded queue. The event loop never runs a query: it hands the request here and the
//! answer comes back through the reply the loop gave (a channel and its waker).
//!
//! # Overflow
//! The queue holds `database.query_queue_max` requests; one more is answered `429` at once
//! and counted (`rejected`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use postgres::Client;
use tickstock_engine::Channel;

use super::aggs::{self, AggsError, AggsRequest, Timespan};
use super::{ChannelSet, Link};
use crate::config::DatabaseSettings;

/// An answer: the status line and the JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// `200 OK`, `503 Service Unavailable`...
    pub status: &'static str,
    /// JSON.
    pub body: String,
}

/// Where an answer goes.
pub type Reply = Box<dyn FnOnce(Answer) + Send>;

/// One request for the pool.
pub struct Job {
    /// The request.
    pub request: AggsRequest,
    /// `http://host:port`, for `next_url`.
    pub base: String,
    /// Its id (in the answer and the logs).
    pub request_id: String,
    /// Where the answer goes.
    pub reply: Reply,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("request", &self.request).finish_non_exhaustive()
    }
}

/// The pool's counters (`/metrics`).
#[derive(Debug, Default)]
pub struct QueryCounters {
    /// Requests answered (any status).
    pub answered: AtomicU64,
    /// Requests refused with 429: the queue was full.
    pub rejected: AtomicU64,
    /// Queries that failed (503, 504, 500).
    pub failed: AtomicU64,
}

/// The threads and their queue.
#[derive(Debug)]
pub struct QueryPool {
    queue: Mutex<Option<SyncSender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Its counters.
    pub counters: Arc<QueryCounters>,
    /// Dates in requests are days here.
    pub timezone: chrono_tz::Tz,
    /// `limit` is capped here.
    pub limit_max: u32,
    timeout_ms: u32,
}

impl QueryPool {
    /// Starts the threads.
    pub fn start(
        settings: &DatabaseSettings,
        link: Link,
        timezone: chrono_tz::Tz,
        channels: ChannelSet,
    ) -> Result<QueryPool, String> {
        let (queue, jobs) = mpsc::sync_channel::<Job>(settings.query_queue_max as usize);
        let jobs = Arc::new(Mutex::new(jobs));
        let counters = Arc::new(QueryCounters::default());
        let timeout_ms = settings.query_timeout_ms;
        let mut threads = Vec::new();
        for index in 0..settings.query_threads {
            let (jobs, link, counters) = (Arc::clone(&jobs), link.clone(), Arc::clone(&counters));
            let thread = std::thread::Builder::new()
                .name(format!("tickstock-query-{index}"))
                .spawn(move || {
                    let mut client: Option<Client> = None;
                    loop {
                        // The lock is held only to take one job.
                        let job = match jobs.lock() {
                            Ok(jobs) => jobs.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let answer = run(&mut client, &link, timeout_ms, channels, &job);
                        if !answer.status.starts_with("200") && !answer.status.starts_with('4') {
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        counters.answered.fetch_add(1, Ordering::Relaxed);
                        (job.reply)(answer);
                    }
                })
                .map_err(|e| format!("cannot start the query threads: {e}"))?;
            threads.push(thread);
        }
        Ok(QueryPool {
            queue: Mutex::new(Some(queue)),
            threads: Mutex::new(threads),
            counters,
            timezone,
            limit_max: settings.query_limit_max,
            timeout_ms,
        })
    }

    /// The longest a request may wait for its answer: the queue's share and the query's.
    pub fn wait_ms(&self) -> u64 {
        2 * u64::from(self.timeout_ms)
    }

    /// Queues `job`, or gives it back when the queue is full (answer it 429) or the pool
    /// has stopped.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let queue = self.queue.lock().ok().and_then(|q| q.clone());
        let Some(queue) = queue else { return Err(job) };
        queue.try_send(job).map_err(|error| {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            match error {
                TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
            }
        })
    }

    /// Stops the threads once the queue is empty.
    pub fn stop(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.take();
        }
        let threads = self.threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Answers one job on this thread's connection.
fn run(
    client: &mut Option<Client>,
    link: &Link,
    timeout_ms: u32,
    channels: ChannelSet,
    job: &Job,
) -> Answer {
    let error = |e: AggsError| Answer { status: e.status, body: e.body(&job.request_id) };
    let (channel, name) = match job.request.timespan {
        Timespan::Minute => (Channel::Am, "AM"),
        Timespan::Second => (Channel::A, "A"),
    };
    if !channels.has(channel) {
        return error(AggsError {
            status: "404 Not Found",
            message: format!(
                "{} bars are not stored here: database.channels lacks {name}",
                if name == "A" { "second" } else { "minute" }
            ),
        });
    }
    for attempt in 0..2 {
        if client.as_ref().is_none_or(Client::is_closed) {
            match link.connect_plain() {
                Ok(mut connected) => {
                    let timeout = format!("SET statement_timeout = {timeout_ms}");
                    if connected.batch_execute(&timeout).is_ok() {
                        *client = Some(connected);
                    }
                }
                Err(why) => {
                    return error(AggsError {
                        status: "503 Service Unavailable",
                        message: format!("the database is unavailable: {why}"),
                    })
                }
            }
        }
        let Some(connected) = client.as_mut() else { continue };
        match aggs::query(connected, &job.request) {
            Ok(rows) => {
                let body = aggs::answer(&job.request, rows, &job.base, &job.request_id);
                return Answer { status: "200 OK", body };
            }
            Err(e) if e.code().is_some_and(|c| c.code() == "57014") => {
                return error(AggsError {
                    status: "504 Gateway Timeout",
                    message: format!("the query took longer than {timeout_ms} ms"),
                })
            }
            // A connection lost since the last request: once more on a new one.
            Err(e) if attempt == 0 && (connected.is_closed() || e.as_db_error().is_none()) => {
                *client = None;
            }
            Err(e) => {
                *client = None;
                return error(AggsError {
                    status: "503 Service Unavailable",
                    message: format!("the query failed: {}", super::reason(&e)),
                });
            }
        }
    }
    error(AggsError {
        status: "503 Service Unavailable",
        message: "the database is unavailable".to_owned(),
    })
}
