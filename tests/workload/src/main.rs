//! memload: memory workloads with known shapes for guardian's tests and benchmarks.
//!
//! Usage: `memload <pattern> [--key value ...]`, sizes like `64m`, durations in milliseconds.
//!   hog        --step 1m [--max 0] [--hold-ms 0]    touch anonymous memory until killed (or max)
//!   pagecache  --file PATH --size 256m --rounds 3 [--sync-every 0]
//!                                                   write a file, then read it again and again
//!   faults     --size 256m --rounds 20              map, touch and unmap: page-fault heavy
//!   spike      --base 16m --spike 64m --spike-ms 50 --hold-ms 2000 [--delay-ms 300]
//!              [--ready-ms 0 --ready-file /tmp/ready]
//!                                                   hold base, add a short spike, free it, hold
//!                                                   (--delay-ms 0: a start-up spike, then settle;
//!                                                   --ready-ms N: create the ready file N ms
//!                                                   after start, as a service that accepts
//!                                                   connections once its init is done)
//!   staircase  --step 8m --every-ms 500 --max 64m --hold-ms 0
//!                                                   a leak: one step more every interval
//!   sawtooth   --max 64m --step 4m --every-ms 100 --cycles 3
//!                                                   grow to max, free everything, again
//!
//! It prints one line per phase to stderr so a test log shows where it was when it died.

use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Write},
    process::ExitCode,
    time::{Duration, Instant},
};

const PAGE: usize = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((pattern, rest)) = args.split_first() else {
        eprintln!(
            "usage: memload <hog|pagecache|faults|spike|staircase|sawtooth> [--key value ...]"
        );
        return ExitCode::from(2);
    };
    let opts = match parse_opts(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("memload: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match pattern.as_str() {
        "hog" => hog(&opts),
        "pagecache" => pagecache(&opts),
        "faults" => faults(&opts),
        "spike" => spike(&opts),
        "staircase" => staircase(&opts),
        "sawtooth" => sawtooth(&opts),
        other => Err(format!("unknown pattern {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memload: {e}");
            ExitCode::from(1)
        }
    }
}

struct Opts(HashMap<String, String>);

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut map = HashMap::new();
    let mut it = args.iter();
    while let Some(key) = it.next() {
        let key = key
            .strip_prefix("--")
            .ok_or_else(|| format!("expected --key, got {key:?}"))?;
        let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        map.insert(key.to_string(), value.clone());
    }
    Ok(Opts(map))
}

impl Opts {
    fn size(&self, key: &str, default: &str) -> Result<usize, String> {
        parse_size(self.0.get(key).map(String::as_str).unwrap_or(default))
    }
    fn num(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.0.get(key) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{key}: not a number: {v:?}")),
            None => Ok(default),
        }
    }
    fn str(&self, key: &str) -> Result<&str, String> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("--{key} is required"))
    }
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, scale) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    num.parse::<usize>()
        .map(|n| n * scale)
        .map_err(|_| format!("not a size: {s:?}"))
}

/// Touches one byte per page so the memory is really charged.
fn touch(buf: &mut [u8]) {
    for i in (0..buf.len()).step_by(PAGE) {
        buf[i] = 1;
    }
}

fn hog(opts: &Opts) -> Result<(), String> {
    let step = opts.size("step", "1m")?;
    let max = opts.size("max", "0")?;
    let hold = opts.num("hold-ms", 0)?;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    eprintln!("memload hog: pid {} step {step}", std::process::id());
    while max == 0 || total < max {
        let mut chunk = vec![0u8; step];
        touch(&mut chunk);
        chunks.push(chunk);
        total += step;
    }
    eprintln!("memload hog: holding {total} bytes");
    std::thread::sleep(Duration::from_millis(hold));
    std::hint::black_box(&chunks);
    Ok(())
}

fn pagecache(opts: &Opts) -> Result<(), String> {
    let path = opts.str("file")?;
    let size = opts.size("size", "256m")?;
    let rounds = opts.num("rounds", 3)?;
    let sync_every = opts.size("sync-every", "0")?;
    let block = vec![7u8; 1 << 20];
    let mut file = File::create(path).map_err(|e| format!("{path}: {e}"))?;
    let mut written = 0;
    while written < size {
        file.write_all(&block).map_err(|e| format!("{path}: {e}"))?;
        written += block.len();
        // --sync-every bounds dirty pages: under a small v1 limit, reclaim cannot free pages
        // that are not yet written, and the writer may be OOM-killed instead of stalling.
        if sync_every > 0 && written % sync_every == 0 {
            file.sync_data().map_err(|e| format!("{path}: {e}"))?;
        }
    }
    file.sync_all().map_err(|e| format!("{path}: {e}"))?;
    eprintln!("memload pagecache: wrote {written} bytes");
    let mut buf = vec![0u8; 1 << 20];
    for round in 0..rounds {
        let mut f = File::open(path).map_err(|e| format!("{path}: {e}"))?;
        let mut read = 0;
        loop {
            let n = f.read(&mut buf).map_err(|e| format!("{path}: {e}"))?;
            if n == 0 {
                break;
            }
            read += n;
        }
        eprintln!("memload pagecache: round {round} read {read} bytes");
    }
    Ok(())
}

fn spike(opts: &Opts) -> Result<(), String> {
    let base = opts.size("base", "16m")?;
    let extra = opts.size("spike", "64m")?;
    let spike_ms = opts.num("spike-ms", 50)?;
    let hold = opts.num("hold-ms", 2000)?;
    let delay = opts.num("delay-ms", 300)?;
    let ready = opts.num("ready-ms", 0)?;
    let ready_file = opts
        .0
        .get("ready-file")
        .map_or("/tmp/ready", String::as_str);
    let born = Instant::now();
    let mut resident = vec![0u8; base];
    touch(&mut resident);
    std::thread::sleep(Duration::from_millis(delay));
    let start = Instant::now();
    let mut burst = vec![0u8; extra];
    touch(&mut burst);
    std::thread::sleep(Duration::from_millis(spike_ms).saturating_sub(start.elapsed()));
    drop(burst);
    eprintln!("memload spike: {extra} bytes for {:?}", start.elapsed());
    if ready > 0 {
        std::thread::sleep(Duration::from_millis(ready).saturating_sub(born.elapsed()));
        File::create(ready_file).map_err(|e| format!("{ready_file}: {e}"))?;
        eprintln!("memload spike: ready after {:?}", born.elapsed());
    }
    std::thread::sleep(Duration::from_millis(hold));
    std::hint::black_box(&resident);
    Ok(())
}

fn staircase(opts: &Opts) -> Result<(), String> {
    let step = opts.size("step", "8m")?;
    let every = opts.num("every-ms", 500)?;
    let max = opts.size("max", "64m")?;
    let hold = opts.num("hold-ms", 0)?;
    let mut held: Vec<Vec<u8>> = Vec::new();
    while held.len() * step < max {
        let mut chunk = vec![0u8; step];
        touch(&mut chunk);
        held.push(chunk);
        eprintln!("memload staircase: {} bytes", held.len() * step);
        std::thread::sleep(Duration::from_millis(every));
    }
    std::thread::sleep(Duration::from_millis(hold));
    std::hint::black_box(&held);
    Ok(())
}

fn sawtooth(opts: &Opts) -> Result<(), String> {
    let max = opts.size("max", "64m")?;
    let step = opts.size("step", "4m")?;
    let every = opts.num("every-ms", 100)?;
    let cycles = opts.num("cycles", 3)?;
    for cycle in 0..cycles {
        let mut held: Vec<Vec<u8>> = Vec::new();
        while held.len() * step < max {
            let mut chunk = vec![0u8; step];
            touch(&mut chunk);
            held.push(chunk);
            std::thread::sleep(Duration::from_millis(every));
        }
        eprintln!(
            "memload sawtooth: cycle {cycle} reached {} bytes",
            held.len() * step
        );
        drop(held);
        std::thread::sleep(Duration::from_millis(every));
    }
    Ok(())
}

fn faults(opts: &Opts) -> Result<(), String> {
    let size = opts.size("size", "256m")?;
    let rounds = opts.num("rounds", 20)?;
    let start = Instant::now();
    for _ in 0..rounds {
        let mut buf = vec![0u8; size];
        touch(&mut buf);
        std::hint::black_box(&buf);
    }
    let elapsed = start.elapsed();
    let pages = (size / PAGE) as u64 * rounds;
    // Machine-readable last line for the benchmark harness.
    println!(
        "faults pages={pages} seconds={:.6} ns_per_fault={:.1}",
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / pages as f64
    );
    Ok(())
}
