//! Compares two ways for worker threads to share Redis, with the same
//! number of threads each issuing one INCR at a time: a connection per
//! thread, and one thread that owns a connection and sends whatever is
//! queued as a pipeline. Prints operations per second for each, A B A B.
//!
//! Usage: redis-sharing REDIS_URL [THREADS] [SECONDS]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn per_thread(url: &str, threads: usize, run: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let client = redis::Client::open(url).unwrap();
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            thread::spawn(move || {
                let mut conn = client.get_connection().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let _: i64 = redis::cmd("INCR")
                        .arg("bench:sharing")
                        .query(&mut conn)
                        .unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    measure(&stop, &done, run, handles)
}

fn pipelined(url: &str, threads: usize, run: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (jobs, queue) = mpsc::channel::<mpsc::Sender<i64>>();
    let client = redis::Client::open(url).unwrap();
    let owner = thread::spawn(move || {
        let mut conn = client.get_connection().unwrap();
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            batch.extend(queue.try_iter().take(255));
            let mut pipe = redis::pipe();
            for _ in &batch {
                pipe.cmd("INCR").arg("bench:sharing");
            }
            let values: Vec<i64> = pipe.query(&mut conn).unwrap();
            for (reply, value) in batch.into_iter().zip(values) {
                let _ = reply.send(value);
            }
        }
    });
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, done, jobs) = (Arc::clone(&stop), Arc::clone(&done), jobs.clone());
            thread::spawn(move || {
                let (reply, answer) = mpsc::channel();
                while !stop.load(Ordering::Relaxed) {
                    jobs.send(reply.clone()).unwrap();
                    answer.recv().unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    drop(jobs);
    let rate = measure(&stop, &done, run, handles);
    owner.join().unwrap();
    rate
}

fn measure(
    stop: &AtomicBool,
    done: &AtomicU64,
    run: Duration,
    handles: Vec<thread::JoinHandle<()>>,
) -> f64 {
    let started = Instant::now();
    thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for handle in handles {
        handle.join().unwrap();
    }
    count as f64 / elapsed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .expect("usage: redis-sharing REDIS_URL [THREADS] [SECONDS]");
    let threads = args.get(2).map_or(16, |t| t.parse().unwrap());
    let run = Duration::from_secs(args.get(3).map_or(5, |s| s.parse().unwrap()));
    println!("threads={threads} seconds={}", run.as_secs());
    for round in 1..=2 {
        let a = per_thread(url, threads, run);
        let b = pipelined(url, threads, run);
        println!("round {round}: connection per thread {a:.0} ops/s, one pipelining thread {b:.0} ops/s, ratio {:.2}", b / a);
    }
}
