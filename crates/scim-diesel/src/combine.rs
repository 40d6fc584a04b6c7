//! Concurrent PostgreSQL creates written by one statement (see `DieselStore::create`), and
//! concurrent bearer-token lookups read by one (see `DieselStore::find_token`: every request
//! that is not a point read resolves its token first, and one statement per lookup cost a
//! round trip and the per-statement work below; creates +4 %, PostgreSQL CPU per create -8 %,
//! docs/BENCHMARKS.md).
//!
//! A create on PostgreSQL is one statement (the resource and its index rows) and one commit.
//! Most of what that costs the database is per statement and per commit, not per row:
//! executor start-up, the commit record and the wait for its flush. Measured with `pgbench`
//! on the benchmark machine, eight creates per transaction gave 45 % more creates per second
//! than one (docs/BENCHMARKS.md); in the server, batching gave 18-23 % more.
//!
//! So callers queue their job, and a caller that finds fewer batches running than its
//! combiner allows ([`Combiner::with_leaders`]) becomes a leader: it takes everything queued at that moment (up to [`MAX_TAKE`]), its own
//! job included, runs the batch, tells the first caller still queued to lead the next batch
//! (or, with nothing queued, stops counting as a leader), and posts each job's outcome to its
//! caller. No thread of its own: the callers are the blocking-pool threads that would have
//! run their creates one by one. With one request at a time, each batch holds one job.
//!
//! Each job is taken from the queue after it was queued, so its statement starts after its
//! request arrived; every caller returns only after the commit that holds its row (or with
//! its job handed back, to run on its own).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Batches of creates that may be in the database at once ([`Combiner::default`]): while one
/// waits for its commit to be flushed, the next one runs.
const LEADERS: usize = 2;

/// Most jobs one batch takes (bounds the size of a statement and a leader's extra wait).
const MAX_TAKE: usize = 64;

/// What became of a job in its batch.
pub(crate) enum Outcome<E> {
    /// written and committed
    Done,
    /// settled without writing: this error is the job's answer
    Failed(E),
    /// not written (a conflict, or the batch failed): the caller runs it on its own, which
    /// gives it the answer it would have had alone
    Alone,
}

/// The queue of jobs of type `J` (see the module documentation).
pub(crate) struct Combiner<J, E> {
    state: Mutex<State<J, E>>,
    /// batches that may run at once
    most_leaders: usize,
}

struct State<J, E> {
    queue: Vec<Queued<J, E>>,
    /// batches running, or about to (a caller told to lead and not yet awake)
    leaders: usize,
}

struct Queued<J, E> {
    job: J,
    slot: Arc<Slot<J, E>>,
    /// told to lead the next batch (and counted in `leaders`): not to be told again
    told: bool,
}

/// Where one caller waits: for its outcome, or to be told to lead the next batch. Each
/// caller is woken on its own, so a batch wakes only its own callers and the next leader.
struct Slot<J, E> {
    state: Mutex<SlotState<J, E>>,
    wake: Condvar,
}

struct SlotState<J, E> {
    outcome: Option<(J, Outcome<E>)>,
    lead: bool,
}

impl<J, E> Default for Combiner<J, E> {
    fn default() -> Self {
        Combiner::with_leaders(LEADERS)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every state here is consistent whenever its lock is free (batches run outside them).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<J, E> Combiner<J, E> {
    /// A combiner that runs at most `most_leaders` batches at once (at least one).
    pub(crate) fn with_leaders(most_leaders: usize) -> Self {
        Combiner {
            state: Mutex::new(State {
                queue: Vec::new(),
                leaders: 0,
            }),
            most_leaders: most_leaders.max(1),
        }
    }

    /// Queues `job` and returns it with its outcome once a batch (perhaps led by this caller)
    /// has run it. `batch` gets the jobs of one batch and says what became of each, in order;
    /// it must not panic, but if it does, its jobs come back as [`Outcome::Alone`].
    pub(crate) fn run(&self, job: J, batch: &dyn Fn(&[J]) -> Vec<Outcome<E>>) -> (J, Outcome<E>) {
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                outcome: None,
                lead: false,
            }),
            wake: Condvar::new(),
        });
        let mut lead = {
            let mut st = lock(&self.state);
            st.queue.push(Queued {
                job,
                slot: slot.clone(),
                told: false,
            });
            let lead = st.leaders < self.most_leaders;
            if lead {
                st.leaders += 1;
            }
            lead
        };
        loop {
            if lead {
                self.lead(batch);
            }
            let mut mine = lock(&slot.state);
            loop {
                // Leading first: a caller told to lead passes the lead on (or gives it up)
                // even when its own job was in another batch that has answered it already.
                if std::mem::take(&mut mine.lead) {
                    break;
                }
                if let Some(done) = mine.outcome.take() {
                    return done;
                }
                mine = slot.wake.wait(mine).unwrap_or_else(PoisonError::into_inner);
            }
            lead = true;
        }
    }

    /// Runs one batch of what is queued (the caller counts as a leader already), tells the
    /// first job still queued to lead the next one, and posts the outcomes.
    fn lead(&self, batch: &dyn Fn(&[J]) -> Vec<Outcome<E>>) {
        let (jobs, slots): (Vec<J>, Vec<Arc<Slot<J, E>>>) = {
            let mut st = lock(&self.state);
            let take = st.queue.len().min(MAX_TAKE);
            st.queue.drain(..take).map(|q| (q.job, q.slot)).unzip()
        };
        let mut outcomes = if jobs.is_empty() {
            Vec::new()
        } else {
            catch_unwind(AssertUnwindSafe(|| batch(&jobs))).unwrap_or_else(|_| {
                log::error!("a batch panicked; its jobs run one by one");
                Vec::new()
            })
        };
        // A short answer (a panic) leaves the rest to run on their own.
        outcomes.resize_with(jobs.len(), || Outcome::Alone);
        {
            // The lead flag is set under the queue's lock: the caller told cannot have been
            // taken into a batch, and answered, before it learns that it leads.
            let mut st = lock(&self.state);
            match st.queue.iter_mut().find(|q| !q.told) {
                Some(next) => {
                    next.told = true;
                    lock(&next.slot.state).lead = true;
                    next.slot.wake.notify_one();
                }
                None => st.leaders -= 1,
            }
        }
        for ((job, slot), outcome) in jobs.into_iter().zip(slots).zip(outcomes) {
            lock(&slot.state).outcome = Some((job, outcome));
            slot.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_job_gets_its_own_outcome_back_and_batches_combine_concurrent_jobs() {
        let combiner: Arc<Combiner<usize, String>> = Arc::default();
        let batches = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (combiner, batches) = (combiner.clone(), batches.clone());
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    for round in 0..50 {
                        let job = i * 1000 + round;
                        let (back, outcome) = combiner.run(job, &|jobs: &[usize]| {
                            batches.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            jobs.iter()
                                .map(|j| match j % 3 {
                                    0 => Outcome::Done,
                                    1 => Outcome::Failed(format!("job {j}")),
                                    _ => Outcome::Alone,
                                })
                                .collect()
                        });
                        assert_eq!(back, job);
                        match (job % 3, outcome) {
                            (0, Outcome::Done) | (2, Outcome::Alone) => {}
                            (1, Outcome::Failed(m)) => assert_eq!(m, format!("job {job}")),
                            _ => panic!("job {job} got another job's outcome"),
                        }
                        seen.push(job);
                    }
                    seen.len()
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 800);
        let n = batches.load(Ordering::Relaxed);
        assert!(
            n < 800,
            "16 concurrent callers never shared a batch ({n} batches)"
        );
        assert_idle(&combiner);
    }

    /// Nothing queued and no leader counted once every caller has returned: a lead that was
    /// lost would leave later callers waiting for ever.
    fn assert_idle<J, E>(combiner: &Combiner<J, E>) {
        let st = lock(&combiner.state);
        assert_eq!((st.queue.len(), st.leaders), (0, 0));
    }

    #[test]
    fn the_lead_is_never_lost_when_batches_are_instant() {
        let combiner: Arc<Combiner<u32, ()>> = Arc::default();
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let combiner = combiner.clone();
                std::thread::spawn(move || {
                    for job in 0..300 {
                        let (back, outcome) = combiner.run(job, &|jobs: &[u32]| {
                            jobs.iter().map(|_| Outcome::Done).collect()
                        });
                        assert_eq!(back, job);
                        assert!(matches!(outcome, Outcome::Done));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_idle(&combiner);
    }

    /// Callers arriving while a batch runs are answered by a later batch, which starts after
    /// each of them arrived (a token lookup so sees every revocation committed before its
    /// request), and share it.
    #[test]
    fn jobs_queued_behind_a_running_batch_share_a_batch_started_after_them() {
        use std::sync::OnceLock;
        use std::time::Duration;
        // A job: when its caller arrived (batches started by then), and the batch that ran it.
        type Job = (usize, OnceLock<usize>);
        let combiner: Arc<Combiner<Job, ()>> = Arc::default();
        let started = Arc::new(AtomicUsize::new(0));
        let batch = |started: &AtomicUsize, pause: Duration| {
            let n = started.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(pause);
            n
        };
        let slow = {
            let (combiner, started) = (combiner.clone(), started.clone());
            std::thread::spawn(move || {
                combiner.run((0, OnceLock::new()), &|jobs: &[Job]| {
                    // Long enough for the callers below to arrive meanwhile, even on a busy
                    // machine.
                    let n = batch(&started, Duration::from_millis(1_000));
                    jobs.iter().map(|j| (j.1.set(n), Outcome::Done).1).collect()
                })
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let others: Vec<_> = (0..8)
            .map(|_| {
                let (combiner, started) = (combiner.clone(), started.clone());
                std::thread::spawn(move || {
                    let arrived = started.load(Ordering::SeqCst);
                    combiner.run((arrived, OnceLock::new()), &|jobs: &[Job]| {
                        // As long: whatever arrives late still finds a batch queued.
                        let n = batch(&started, Duration::from_millis(1_000));
                        jobs.iter().map(|j| (j.1.set(n), Outcome::Done).1).collect()
                    })
                })
            })
            .collect();
        let (first, _) = slow.join().unwrap();
        assert_eq!(first.1.get(), Some(&0));
        for o in others {
            let ((arrived, ran_in), outcome) = o.join().unwrap();
            assert!(matches!(outcome, Outcome::Done));
            let ran_in = *ran_in.get().unwrap();
            assert!(
                ran_in >= arrived,
                "run by batch {ran_in}, which started before its caller arrived"
            );
        }
        // One batch beside the slow one (a second leader) took what was queued then; what
        // queued behind both went into the next.
        let batches = started.load(Ordering::SeqCst);
        assert!(batches <= 3, "nine callers, {batches} batches");
        assert_idle(&combiner);
    }

    #[test]
    fn a_panicking_batch_hands_its_jobs_back_to_run_alone() {
        let combiner: Combiner<&str, String> = Combiner::default();
        let (job, outcome) = combiner.run("x", &|_| panic!("boom"));
        assert_eq!(job, "x");
        assert!(matches!(outcome, Outcome::Alone));
        // and the combiner still works
        let (_, outcome) = combiner.run("y", &|jobs| jobs.iter().map(|_| Outcome::Done).collect());
        assert!(matches!(outcome, Outcome::Done));
    }
}
