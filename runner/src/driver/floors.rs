//! Claim floors: per tenant, the key in the claim index below which a runner's last claim
//! found nothing available, so that its next claim starts there instead of stepping over
//! every entry claimed since vacuum last ran (see `runner/sql/claim.sql` for why those pile up).
//!
//! A floor is only a hint about where to start; it is correct as long as no available job sits
//! below it. Jobs appear below a floor only through writes that announce their keys on the
//! wake-up channel ([`WAKE_CHANNEL`](super::WAKE_CHANNEL)); whoever listens feeds each
//! notification to [`Floors::hear`]. Floors are used only while that listener says it is
//! subscribed ([`Floors::listening`]): otherwise announcements would be missed. As a backstop
//! for writes that announce nothing (an operator's SQL), every floor is forgotten once a
//! minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// Floors are all forgotten this often, whatever was heard.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// At most this many tenants' floors are kept (and sent with every claim).
const MAX_FLOORS: usize = 256;

/// Floors cost a claim up to two index probes per tenant it claims from: nothing next to the
/// jobs of a claim from a few tenants, a quarter of a claim of one job from each of hundreds.
/// While claims reach more than `NARROW` tenants, claims go without floors, and every
/// `WIDE_RETRY`th claim uses them to see whether claims have narrowed.
const NARROW: usize = 16;
const WIDE_RETRY: u32 = 8;

/// A position in a tenant's part of the claim index: jobs are claimed in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// The job's priority (lower first).
    pub priority: i32,
    /// When it is due.
    pub run_at: DateTime<Utc>,
    /// Its id.
    pub id: i64,
}

impl Key {
    /// A key no greater than any of `keys`: the least of each column. `None` for no keys.
    pub(super) fn lower_bound(keys: impl IntoIterator<Item = Key>) -> Option<Key> {
        keys.into_iter().reduce(|low, key| Key {
            priority: low.priority.min(key.priority),
            run_at: low.run_at.min(key.run_at),
            id: low.id.min(key.id),
        })
    }
}

/// The floors of one runner's claims, shared by its claim loops and its listener.
#[derive(Debug)]
pub struct Floors {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The announcements are heard: floors may be used.
    listening: bool,
    keys: HashMap<String, Key>,
    /// Counts what was heard, so that a claim can tell what was heard while it ran.
    heard: u64,
    /// The last `heard` that announced jobs.
    announced: u64,
    /// The last `heard` that forgot every floor.
    forgot: u64,
    forgot_at: Instant,
    /// The last claim with floors claimed from more than `NARROW` tenants.
    wide: bool,
    /// Claims without floors since.
    without: u32,
}

/// The floors a claim starts from, in the arrays the claim function takes.
#[derive(Debug, Default)]
pub(super) struct FloorArgs {
    /// What had been heard when the claim started.
    pub(super) heard: u64,
    /// The claim starts from these floors and finds new ones; else it starts every tenant
    /// from the beginning, and the other fields are empty.
    pub(super) used: bool,
    pub(super) tenants: Vec<String>,
    pub(super) priorities: Vec<i32>,
    pub(super) run_ats: Vec<DateTime<Utc>>,
    pub(super) ids: Vec<i64>,
}

impl Default for Floors {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                listening: false,
                keys: HashMap::new(),
                heard: 0,
                announced: 0,
                forgot: 0,
                forgot_at: Instant::now(),
                wide: false,
                without: 0,
            }),
        }
    }
}

impl Floors {
    /// Takes in a notification's payload: jobs became available at or above the announced
    /// key, in some tenant; every floor above it comes down to it. An empty or unreadable
    /// payload forgets every floor.
    pub fn hear(&self, payload: &str) {
        let announced: Option<(i32, DateTime<Utc>, i64)> = serde_json::from_str(payload).ok();
        let mut inner = self.lock();
        inner.heard += 1;
        let Some((priority, run_at, id)) = announced else {
            inner.forget();
            return;
        };
        let key = Key {
            priority,
            run_at,
            id,
        };
        for floor in inner.keys.values_mut() {
            *floor = (*floor).min(key);
        }
        inner.announced = inner.heard;
    }

    /// Whether announcements are heard from now on. Either way every floor is forgotten:
    /// announcements may have been missed.
    pub fn listening(&self, listening: bool) {
        let mut inner = self.lock();
        inner.listening = listening;
        inner.heard += 1;
        inner.forget();
    }

    /// The floors for a claim that starts now.
    pub(super) fn args(&self) -> FloorArgs {
        let mut inner = self.lock();
        if inner.forgot_at.elapsed() >= FORGET_EVERY {
            inner.heard += 1;
            inner.forget();
        }
        let mut args = FloorArgs {
            heard: inner.heard,
            ..FloorArgs::default()
        };
        if !inner.listening {
            return args;
        }
        args.used = !inner.wide || inner.without + 1 >= WIDE_RETRY;
        if !args.used {
            inner.without += 1;
            return args;
        }
        inner.without = 0;
        for (tenant, key) in &inner.keys {
            args.tenants.push(tenant.clone());
            args.priorities.push(key.priority);
            args.run_ats.push(key.run_at);
            args.ids.push(key.id);
        }
        args
    }

    /// Records the floors found by a claim that started when `args` were taken. What was
    /// heard since it started may concern jobs its snapshot did not see: those floors only go
    /// down.
    pub(super) fn found(&self, args: &FloorArgs, found: Vec<(String, Key)>) {
        let started = args.heard;
        let mut inner = self.lock();
        if !args.used {
            return;
        }
        inner.wide = found.len() > NARROW;
        if !inner.listening || inner.forgot > started {
            return;
        }
        // Jobs announced since the claim started may be below what its snapshot showed:
        // its floors may then only lower the ones heard of.
        let heard_since = inner.announced > started;
        let room = MAX_FLOORS.saturating_sub(inner.keys.len());
        let mut added = 0;
        for (tenant, key) in found {
            if let Some(floor) = inner.keys.get_mut(&tenant) {
                *floor = if heard_since { (*floor).min(key) } else { key };
            } else if !heard_since && added < room {
                inner.keys.insert(tenant, key);
                added += 1;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("claim floors lock")
    }
}

impl Inner {
    fn forget(&mut self) {
        self.keys.clear();
        self.forgot = self.heard;
        self.forgot_at = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening() -> Floors {
        let floors = Floors::default();
        floors.listening(true);
        floors
    }

    fn key(id: i64) -> Key {
        Key {
            priority: 0,
            run_at: DateTime::from_timestamp(1_700_000_000, 0).expect("a valid time"),
            id,
        }
    }

    fn floor(floors: &Floors, tenant: &str) -> Option<i64> {
        let args = floors.args();
        let at = args.tenants.iter().position(|t| t == tenant)?;
        Some(args.ids[at])
    }

    fn announce(id: i64) -> String {
        serde_json::json!([0, key(id).run_at, id]).to_string()
    }

    #[test]
    fn hears_the_payload_postgres_sends() {
        let floors = listening();
        floors.found(&floors.args(), vec![("a".into(), key(100))]);
        // `SELECT json_build_array(0, now(), 7)::text`
        floors.hear(r#"[0, "2023-11-14T22:13:19.5+00:00", 7]"#);
        assert_eq!(floor(&floors, "a"), Some(7));
    }

    #[test]
    fn a_claim_sets_the_floor_and_an_announcement_lowers_it() {
        let floors = listening();
        let started = floors.args();
        floors.found(&started, vec![("a".into(), key(100))]);
        assert_eq!(floor(&floors, "a"), Some(100));

        floors.hear(&announce(40));
        assert_eq!(floor(&floors, "a"), Some(40));
        floors.hear(&announce(70));
        assert_eq!(
            floor(&floors, "a"),
            Some(40),
            "an announcement never raises a floor"
        );
    }

    #[test]
    fn what_is_heard_during_a_claim_outlives_the_claims_floor() {
        let floors = listening();
        floors.found(&floors.args(), vec![("a".into(), key(100))]);
        let started = floors.args();
        // A job committed after the claim's snapshot, announced before the claim returned.
        floors.hear(&announce(50));
        floors.found(&started, vec![("a".into(), key(300))]);
        assert_eq!(floor(&floors, "a"), Some(50));

        // The next claim saw that job: its floor stands.
        floors.found(&floors.args(), vec![("a".into(), key(400))]);
        assert_eq!(floor(&floors, "a"), Some(400));
    }

    #[test]
    fn an_empty_payload_forgets_every_floor_and_claims_already_running() {
        let floors = listening();
        floors.found(&floors.args(), vec![("a".into(), key(100))]);
        let started = floors.args();
        floors.hear("");
        assert_eq!(floor(&floors, "a"), None);
        floors.found(&started, vec![("a".into(), key(300))]);
        assert_eq!(floor(&floors, "a"), None);
    }

    #[test]
    fn a_tenant_heard_of_during_its_first_claim_keeps_no_floor() {
        let floors = listening();
        let started = floors.args();
        floors.hear(&announce(5));
        floors.found(&started, vec![("b".into(), key(300))]);
        assert_eq!(floor(&floors, "b"), None);
    }

    #[test]
    fn claims_from_many_tenants_use_floors_now_and_then() {
        let floors = listening();
        let many: Vec<(String, Key)> = (0..100).map(|t| (format!("t{t}"), key(t))).collect();
        let args = floors.args();
        assert!(args.used, "the first claim uses floors");
        floors.found(&args, many.clone());
        let used: Vec<bool> = (0..2 * WIDE_RETRY)
            .map(|_| {
                let args = floors.args();
                let found = if args.used { many.clone() } else { Vec::new() };
                floors.found(&args, found);
                args.used
            })
            .collect();
        assert_eq!(used.iter().filter(|&&used| used).count(), 2);

        // Once a claim with floors claims from few tenants, every claim uses them. Claims
        // without floors try them again every WIDE_RETRY claims.
        let retried = (0..WIDE_RETRY).any(|_| {
            let args = floors.args();
            let found = if args.used {
                many[..3].to_vec()
            } else {
                Vec::new()
            };
            floors.found(&args, found);
            args.used
        });
        assert!(retried, "floors tried again within {WIDE_RETRY} claims");
        assert!(floors.args().used);
    }

    #[test]
    fn a_claimer_that_does_not_listen_uses_no_floors() {
        let floors = Floors::default();
        floors.found(&floors.args(), vec![("a".into(), key(100))]);
        assert!(floors.args().tenants.is_empty());

        floors.listening(true);
        floors.found(&floors.args(), vec![("a".into(), key(100))]);
        floors.listening(false);
        assert!(
            floors.args().tenants.is_empty(),
            "announcements may be missed from now on"
        );
    }
}
