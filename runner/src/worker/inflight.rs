//! The jobs this runner has claimed and not yet recorded: what the heartbeat renews.
//!
//! Entries are keyed by job id and stamped with a ticket unique to the claim, so that the
//! completer forgetting an old claim can never drop a newer claim of the same job.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::job::Job;

struct Entry {
    ticket: u64,
    attempt: u32,
    renewed: Instant,
    lease_lost: CancellationToken,
}

/// One claim of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    pub job_id: i64,
    pub attempt: u32,
    seq: u64,
}

/// Claimed jobs by id. A std mutex: every critical section is a map operation.
#[derive(Default)]
pub(super) struct InFlight {
    jobs: Mutex<HashMap<i64, Entry>>,
    next_ticket: AtomicU64,
}

impl InFlight {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Entry>> {
        self.jobs.lock().expect("in-flight lock poisoned")
    }

    /// Records a job just claimed (its lease is fresh). The token fires when the heartbeat
    /// finds that this claim's lease is gone.
    pub fn insert(&self, job: &Job) -> (Ticket, CancellationToken) {
        let seq = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let lease_lost = CancellationToken::new();
        let entry = Entry {
            ticket: seq,
            attempt: job.attempt,
            renewed: Instant::now(),
            lease_lost: lease_lost.clone(),
        };
        self.jobs().insert(job.id, entry);
        let ticket = Ticket {
            job_id: job.id,
            attempt: job.attempt,
            seq,
        };
        (ticket, lease_lost)
    }

    /// Forgets a claim whose outcome is recorded (or abandoned).
    pub fn remove(&self, ticket: Ticket) {
        let mut jobs = self.jobs();
        if jobs
            .get(&ticket.job_id)
            .is_some_and(|e| e.ticket == ticket.seq)
        {
            jobs.remove(&ticket.job_id);
        }
    }

    /// Claims whose lease was last renewed at least `age` ago.
    pub fn renewal_due(&self, age: Duration) -> Vec<Ticket> {
        let now = Instant::now();
        self.jobs()
            .iter()
            .filter(|(_, e)| now.duration_since(e.renewed) >= age)
            .map(|(id, e)| Ticket {
                job_id: *id,
                attempt: e.attempt,
                seq: e.ticket,
            })
            .collect()
    }

    /// Notes that the leases of `held` were renewed at `at`, and signals the loss of every
    /// other claim in `asked`.
    pub fn renewed(&self, asked: &[Ticket], held: &[i64], at: Instant) {
        let held: HashSet<i64> = held.iter().copied().collect();
        let mut jobs = self.jobs();
        for ticket in asked {
            let Some(entry) = jobs
                .get_mut(&ticket.job_id)
                .filter(|e| e.ticket == ticket.seq)
            else {
                continue;
            };
            if held.contains(&ticket.job_id) {
                entry.renewed = at;
            } else {
                entry.lease_lost.cancel();
            }
        }
    }

    /// How many jobs are in flight.
    pub fn len(&self) -> usize {
        self.jobs().len()
    }
}
