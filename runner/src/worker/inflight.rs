//! The jobs this runner has claimed and not yet recorded; the heartbeat renews those held by a
//! lease (a batch transaction holds the others).
//!
//! Entries are keyed by job id and stamped with a ticket unique to the claim, so that the
//! completer forgetting an old claim can never drop a newer claim of the same job.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::job::Job;

struct Entry {
    ticket: u64,
    attempt: u32,
    renewed: Instant,
    lease_lost: CancellationToken,
    cancel: Cancel,
    /// Its outcome is being written: a renewal that misses it may come after the commit.
    recording: bool,
    /// Held by a per-job lease, which the heartbeat renews; else by a batch transaction.
    leased: bool,
}

/// One claim of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    pub job_id: i64,
    pub attempt: u32,
    seq: u64,
}

/// An operator's request to stop a running attempt: fires once, with who asked.
#[derive(Clone, Default)]
pub(super) struct Cancel {
    token: CancellationToken,
    by: Arc<OnceLock<String>>,
}

impl Cancel {
    /// Asks the attempt to stop, as `by`; the first request names who cancelled it.
    fn request(&self, by: &str) {
        let _ = self.by.set(by.to_owned());
        self.token.cancel();
    }

    /// Waits for a request and says who made it.
    pub async fn requested(&self) -> String {
        self.token.cancelled().await;
        self.by.get().cloned().unwrap_or_default()
    }
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

    /// Records a job claimed by a claim asked for at `asked_at` (its lease, if `leased`,
    /// started after that). The token fires when this claim's lease or batch is found gone.
    pub fn insert(
        &self,
        job: &Job,
        asked_at: Instant,
        leased: bool,
    ) -> (Ticket, CancellationToken, Cancel) {
        let seq = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let lease_lost = CancellationToken::new();
        let cancel = Cancel::default();
        let entry = Entry {
            ticket: seq,
            attempt: job.attempt,
            renewed: asked_at,
            lease_lost: lease_lost.clone(),
            cancel: cancel.clone(),
            recording: false,
            leased,
        };
        self.jobs().insert(job.id, entry);
        let ticket = Ticket {
            job_id: job.id,
            attempt: job.attempt,
            seq,
        };
        (ticket, lease_lost, cancel)
    }

    /// Asks the running attempt `attempt` of job `id`, if this runner holds it, to stop, as
    /// `by`. Returns whether it holds it.
    pub fn cancel(&self, id: i64, attempt: u32, by: &str) -> bool {
        let jobs = self.jobs();
        let Some(entry) = jobs.get(&id).filter(|e| e.attempt == attempt) else {
            return false;
        };
        entry.cancel.request(by);
        true
    }

    /// Notes that the outcomes of `tickets` are being written. Their leases are still renewed,
    /// but one that a renewal misses is not taken for lost: the outcome may have been committed
    /// meanwhile, and the write's fence decides.
    pub fn recording(&self, tickets: impl IntoIterator<Item = Ticket>) {
        self.update(tickets, |entry| entry.recording = true);
    }

    /// Notes that `tickets`, claimed in a batch, went on under leases that started after `at`.
    pub fn leased(&self, tickets: impl IntoIterator<Item = Ticket>, at: Instant) {
        self.update(tickets, |entry| {
            entry.leased = true;
            entry.renewed = at;
        });
    }

    /// Applies `change` to the entry of each of `tickets` still held by that claim.
    fn update(&self, tickets: impl IntoIterator<Item = Ticket>, change: impl Fn(&mut Entry)) {
        let mut jobs = self.jobs();
        for ticket in tickets {
            if let Some(entry) = jobs
                .get_mut(&ticket.job_id)
                .filter(|e| e.ticket == ticket.seq)
            {
                change(entry);
            }
        }
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

    /// Every claim held: its job's id and attempt.
    pub fn held(&self) -> Vec<(i64, u32)> {
        let jobs = self.jobs();
        jobs.iter().map(|(id, e)| (*id, e.attempt)).collect()
    }

    /// Leased claims whose lease was last renewed at least `age` ago.
    pub fn renewal_due(&self, age: Duration) -> Vec<Ticket> {
        let now = Instant::now();
        self.jobs()
            .iter()
            .filter(|(_, e)| e.leased && now.duration_since(e.renewed) >= age)
            .map(|(id, e)| Ticket {
                job_id: *id,
                attempt: e.attempt,
                seq: e.ticket,
            })
            .collect()
    }

    /// Notes that the leases of `held` were renewed at `at`, and signals the loss of every
    /// other claim in `asked` still running here. Returns how many were lost.
    pub fn renewed(&self, asked: &[Ticket], held: &[i64], at: Instant) -> usize {
        let held: HashSet<i64> = held.iter().copied().collect();
        let mut jobs = self.jobs();
        let mut lost = 0;
        for ticket in asked {
            let Some(entry) = jobs
                .get_mut(&ticket.job_id)
                .filter(|e| e.ticket == ticket.seq)
            else {
                continue;
            };
            if held.contains(&ticket.job_id) {
                entry.renewed = at;
            } else if !entry.recording {
                entry.lease_lost.cancel();
                lost += 1;
            }
        }
        lost
    }

    /// How many jobs are in flight.
    pub fn len(&self) -> usize {
        self.jobs().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_due_for_renewal_by_when_it_was_asked_not_when_it_arrived() {
        let inflight = InFlight::default();
        let interval = Duration::from_secs(1);
        // A claim that took two intervals to come back: its lease began before it did.
        let asked_at = Instant::now() - 2 * interval;
        let (ticket, lease_lost, _) =
            inflight.insert(&Job::standalone("slow", "{}"), asked_at, true);
        assert_eq!(inflight.renewal_due(interval), vec![ticket]);

        inflight.renewed(&[ticket], &[ticket.job_id], Instant::now());
        assert!(inflight.renewal_due(interval).is_empty());
        assert!(!lease_lost.is_cancelled());
    }

    #[test]
    fn a_batch_claim_is_renewed_only_once_it_goes_on_under_a_lease() {
        let inflight = InFlight::default();
        let long_ago = Instant::now() - Duration::from_secs(10);
        let (ticket, _, _) = inflight.insert(&Job::standalone("short", "{}"), long_ago, false);
        assert!(inflight.renewal_due(Duration::ZERO).is_empty());
        inflight.leased([ticket], Instant::now());
        assert_eq!(inflight.renewal_due(Duration::ZERO), vec![ticket]);
    }

    #[test]
    fn a_lease_missing_from_a_renewal_is_signalled_lost_and_a_newer_claim_is_kept() {
        let inflight = InFlight::default();
        let job = Job::standalone("lost", "{}");
        let (old, old_lost, _) = inflight.insert(&job, Instant::now(), true);
        assert_eq!(inflight.renewed(&[old], &[], Instant::now()), 1);
        assert!(old_lost.is_cancelled());

        let (new, new_lost, _) = inflight.insert(&job, Instant::now(), true);
        inflight.remove(old);
        inflight.recording([new]);
        assert_eq!(
            inflight.renewed(&[new], &[], Instant::now()),
            0,
            "missed while its outcome is written: the outcome may be committed"
        );
        assert!(!new_lost.is_cancelled());
        assert_eq!(
            inflight.len(),
            1,
            "forgetting the old claim keeps the new one"
        );
        inflight.renewed(&[old], &[], Instant::now());
        assert!(!new_lost.is_cancelled(), "a stale ticket touches nothing");
        inflight.remove(new);
        assert_eq!(inflight.len(), 0);
    }
}
