//! Where the CPU goes, read from /proc: CPU seconds (user + system) of the
//! worker, of PostgreSQL, of the local RabbitMQ broker and of the bench
//! process itself (the simulator runs in it), and how busy the machine was.
//!
//! A process group is a root process and all its descendants, each counted
//! with its own time (`utime`, `stime`) and the time of its children that
//! exited and were reaped (`cutime`, `cstime`): a PostgreSQL backend that
//! comes and goes during an interval is in the postmaster's `cutime` by the
//! end of it, so a delta between two samples counts it.

use std::collections::HashMap;
use std::time::Instant;

/// Linux reports in `USER_HZ`, 100 on every architecture we run on.
const TICKS_PER_SEC: f64 = 100.0;

/// One process as /proc/PID/stat shows it.
struct Proc {
    pid: u32,
    ppid: u32,
    comm: String,
    /// utime + stime, ticks.
    own: u64,
    /// cutime + cstime (reaped children), ticks.
    reaped: u64,
}

fn read_proc(path: &str, pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces or parentheses.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    // `rest` starts at field 3 (state): field k of proc(5) is fields[k - 3].
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |k: usize| fields.get(k - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Proc {
        pid,
        ppid: u32::try_from(field(4)?).ok()?,
        comm,
        own: field(14)? + field(15)?,
        reaped: field(16)? + field(17)?,
    })
}

fn all_processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        read_proc(&format!("/proc/{pid}/stat"), pid)
    })
    .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Ticks of every process that is a root or descends from one, with the
/// reaped children of each.
fn group_ticks(procs: &[Proc], is_root: impl Fn(&Proc, &HashMap<u32, &Proc>) -> bool) -> u64 {
    let by_pid: HashMap<u32, &Proc> = procs.iter().map(|p| (p.pid, p)).collect();
    let roots: Vec<u32> = procs
        .iter()
        .filter(|p| is_root(p, &by_pid))
        .map(|p| p.pid)
        .collect();
    let in_group = |p: &Proc| {
        let mut pid = p.pid;
        // Process trees here are a few levels deep; the bound guards a cycle
        // seen through a pid reused between two reads.
        for _ in 0..64 {
            if roots.contains(&pid) {
                return true;
            }
            match by_pid.get(&pid) {
                Some(q) if q.ppid > 1 => pid = q.ppid,
                _ => return false,
            }
        }
        false
    };
    procs
        .iter()
        .filter(|p| in_group(p))
        .map(|p| p.own + p.reaped)
        .sum()
}

/// The postmaster: a `postgres` process whose parent is not `postgres`. Its
/// group is every `postgres` process plus the reaped ones.
fn is_postmaster(p: &Proc, by_pid: &HashMap<u32, &Proc>) -> bool {
    p.comm == "postgres" && by_pid.get(&p.ppid).is_none_or(|q| q.comm != "postgres")
}

/// The local broker (on 5672): `beam.smp` and its children
/// (`erl_child_setup`, `inet_gethost`), not the nodes of the test cluster of
/// scripts/cluster.sh (`ot-rabbit-N@localhost`), nor the shared `epmd`.
fn is_local_broker(p: &Proc, _: &HashMap<u32, &Proc>) -> bool {
    p.comm == "beam.smp" && !cmdline(p.pid).contains("ot-rabbit")
}

/// Ticks of all CPUs together, from the `cpu` line of /proc/stat.
#[derive(Debug, Clone, Copy, Default)]
struct MachineTicks {
    /// user, nice, system, irq, softirq (guest is within user).
    busy: u64,
    /// irq and softirq alone: interrupts, and the loopback networking that
    /// the kernel does outside any process's time.
    interrupts: u64,
    /// All of it, steal (time the hypervisor gave to others) included.
    total: u64,
}

fn machine_ticks() -> MachineTicks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return MachineTicks::default();
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    MachineTicks {
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        interrupts: at(5) + at(6),
        total: (0..8).map(at).sum(),
    }
}

/// The database a PostgreSQL client backend serves, from its process title
/// (`postgres: 15/main: USER DATABASE HOST(PORT) STATE`); `None` for the
/// background processes (`postgres: 15/main: checkpointer`, ...).
fn backend_database(pid: u32) -> Option<String> {
    let title = cmdline(pid);
    let words: Vec<&str> = title.split_whitespace().collect();
    let client = words
        .get(4)
        .is_some_and(|w| w.contains('(') || w.starts_with("[local]"));
    client.then(|| words[3].to_owned())
}

/// CPU counters at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    worker: u64,
    postgres: u64,
    rabbitmq: u64,
    bench: u64,
    machine: MachineTicks,
    /// Own ticks of the live backends serving another database than the
    /// run's: someone else's work, inside the PostgreSQL figure.
    foreign: HashMap<u32, u64>,
}

impl Sample {
    /// Reads every counter now; `worker` is the worker's pid once it runs
    /// (before, its CPU is 0); `database` is the run's database.
    pub fn take(worker: Option<u32>, database: &str) -> Self {
        let procs = all_processes();
        let machine = machine_ticks();
        let foreign = procs
            .iter()
            .filter(|p| p.comm == "postgres")
            .filter(|p| backend_database(p.pid).is_some_and(|db| db != database))
            .map(|p| (p.pid, p.own))
            .collect();
        Self {
            at: Instant::now(),
            worker: worker
                .and_then(|pid| read_proc(&format!("/proc/{pid}/stat"), pid))
                .map_or(0, |p| p.own),
            postgres: group_ticks(&procs, is_postmaster),
            rabbitmq: group_ticks(&procs, is_local_broker),
            // Only its own threads: its reaped children are earlier workers.
            bench: read_proc("/proc/self/stat", std::process::id()).map_or(0, |p| p.own),
            machine,
            foreign,
        }
    }
}

/// Waits (at most `limit`) until the machine is quiet: under 25% busy over
/// a second and no backend of another database than `database` using CPU.
/// `None` when it was quiet in time, else what was seen last.
pub fn wait_quiet(database: &str, limit: std::time::Duration) -> Option<String> {
    let started = Instant::now();
    loop {
        let a = Sample::take(None, database);
        std::thread::sleep(std::time::Duration::from_secs(1));
        let u = Usage::between(&a, &Sample::take(None, database));
        if u.machine_fraction < 0.25 && u.foreign_backends_cpu < 0.02 {
            return None;
        }
        if started.elapsed() >= limit {
            return Some(format!(
                "the machine was not quiet before this run ({:.0}% busy, {} backends of other databases using {:.2} s of CPU per second): \
                 other work is inside these figures",
                u.machine_fraction * 100.0,
                u.foreign_backends,
                u.foreign_backends_cpu
            ));
        }
    }
}

/// CPU seconds used between two samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub secs: f64,
    pub worker: f64,
    pub postgres: f64,
    pub rabbitmq: f64,
    /// The bench process: the simulator, plus the bench's own polling.
    pub bench: f64,
    /// Busy CPU seconds of the whole machine (all cores).
    pub machine_busy: f64,
    /// Of which interrupts (irq, softirq): outside any process's time.
    pub interrupts: f64,
    /// Busy fraction of all cores.
    pub machine_fraction: f64,
    /// Backends of other databases that used CPU during the interval and
    /// were alive at its end, and that CPU: a lower bound of someone else's
    /// work inside `postgres` (backends that exited are not seen).
    pub foreign_backends: usize,
    pub foreign_backends_cpu: f64,
}

impl Usage {
    pub fn between(a: &Sample, b: &Sample) -> Self {
        let secs = |x: u64, y: u64| y.saturating_sub(x) as f64 / TICKS_PER_SEC;
        let total = b.machine.total.saturating_sub(a.machine.total);
        let foreign: Vec<u64> = b
            .foreign
            .iter()
            .map(|(pid, t)| t.saturating_sub(a.foreign.get(pid).copied().unwrap_or(0)))
            .filter(|&ticks| ticks > 0)
            .collect();
        let foreign_ticks: u64 = foreign.iter().sum();
        let foreign_backends = foreign.len();
        Self {
            secs: b.at.duration_since(a.at).as_secs_f64(),
            worker: secs(a.worker, b.worker),
            postgres: secs(a.postgres, b.postgres),
            rabbitmq: secs(a.rabbitmq, b.rabbitmq),
            bench: secs(a.bench, b.bench),
            machine_busy: secs(a.machine.busy, b.machine.busy),
            interrupts: secs(a.machine.interrupts, b.machine.interrupts),
            machine_fraction: if total == 0 {
                f64::NAN
            } else {
                b.machine.busy.saturating_sub(a.machine.busy) as f64 / total as f64
            },
            foreign_backends,
            foreign_backends_cpu: foreign_ticks as f64 / TICKS_PER_SEC,
        }
    }

    /// Busy CPU seconds of the machine outside the four processes and the
    /// interrupts: other work on this machine.
    pub fn others(&self) -> f64 {
        (self.machine_busy - self.interrupts - self.total()).max(0.0)
    }

    /// The four processes together.
    pub fn total(&self) -> f64 {
        self.worker + self.postgres + self.rabbitmq + self.bench
    }

    /// The process (by table name) that used the most CPU, and its seconds.
    pub fn largest(&self) -> (&'static str, f64) {
        [
            ("worker", self.worker),
            ("PostgreSQL", self.postgres),
            ("RabbitMQ", self.rabbitmq),
            ("simulator (bench process)", self.bench),
        ]
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or(("none", 0.0))
    }
}

/// CPU time this thread has run, from /proc/thread-self/schedstat
/// (nanoseconds, unlike the 10 ms ticks of stat); `None` where the kernel
/// does not keep it.
pub fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
