//! oslo.messaging's queue manager (`use_queue_manager`): reply and fanout
//! queues named `<hostname>:<processname>:<n>` instead of a random uuid, so
//! a restarted service declares the queues of its previous run again rather
//! than new ones (at scale, creating and expiring queues costs RabbitMQ
//! more than reusing them).
//!
//! The counter `n` lives in `/dev/shm/<hostname>_<processname>_qmanager` as
//! `<process group>:<counter>:<group leader's start time>`, the format oslo
//! writes: every process of one service generation (a master and its
//! workers share a process group) takes the next number; a new generation
//! (another group, or the same group id with another start time) starts
//! again at 1. The file is locked while it is read and written, so
//! concurrent processes never take the same number.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;

/// Names per-process queues from the shared counter.
#[derive(Debug)]
pub(crate) struct QueueManager {
    hostname: String,
    processname: String,
    path: PathBuf,
}

impl QueueManager {
    /// The manager of `hostname`'s `processname`, counting in /dev/shm.
    pub(crate) fn new(hostname: &str, processname: &str) -> Self {
        Self::in_dir(hostname, processname, PathBuf::from("/dev/shm"))
    }

    fn in_dir(hostname: &str, processname: &str, dir: PathBuf) -> Self {
        QueueManager {
            hostname: hostname.to_owned(),
            processname: processname.to_owned(),
            path: dir.join(format!("{hostname}_{processname}_qmanager")),
        }
    }

    /// The next name: `<hostname>:<processname>:<n>`.
    pub(crate) fn next_name(&self) -> io::Result<String> {
        let n = self.next_counter(service_identity()?)?;
        Ok(format!("{}:{}:{n}", self.hostname, self.processname))
    }

    fn next_counter(&self, (group, started): (u64, u64)) -> io::Result<u64> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        // flock(2) (fs4: std's File::lock is newer than the MSRV).
        fs4::FileExt::lock(&file)?;
        let counter = read_counter(&mut file)
            .filter(|&(g, _, s)| g == group && s == started)
            .map_or(1, |(_, counter, _)| counter + 1);
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{group}:{counter}:{started}")?;
        // Unlocked when the file closes.
        Ok(counter)
    }
}

/// The stored `(group, counter, start time)`, if the file holds one.
fn read_counter(file: &mut File) -> Option<(u64, u64, u64)> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    let mut parts = text.trim().split(':').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// This service generation: the process group, and its leader's start time
/// (jiffies since boot) to tell a reused group id apart; the process itself
/// when it has no group, as oslo does. A group whose leader has exited (a
/// shell that started the service and went) counts with start time 0, so
/// its members still share one counter (oslo.messaging 18.3 fails there).
fn service_identity() -> io::Result<(u64, u64)> {
    let own = std::fs::read_to_string("/proc/self/stat")?;
    let group = stat_field(&own, 5).unwrap_or(0);
    let leader = if group == 0 {
        std::process::id() as u64
    } else {
        group
    };
    let started = std::fs::read_to_string(format!("/proc/{leader}/stat"))
        .ok()
        .and_then(|stat| stat_field(&stat, 22))
        .unwrap_or(0);
    Ok((leader, started))
}

/// Field `n` (1-based, as proc(5) numbers them) of a `/proc/<pid>/stat`
/// line; the command name (field 2) may hold spaces and parentheses.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(n - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager() -> QueueManager {
        let dir =
            std::env::temp_dir().join(format!("qm-{}", novarpc_core::envelope::new_unique_id()));
        std::fs::create_dir_all(&dir).unwrap();
        QueueManager::in_dir("host1", "nova-api", dir)
    }

    #[test]
    fn a_generation_counts_up_and_a_new_one_starts_over() {
        let qm = manager();
        assert_eq!(qm.next_counter((40, 7)).unwrap(), 1);
        assert_eq!(qm.next_counter((40, 7)).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&qm.path).unwrap(), "40:2:7");
        // Restarted: another group, or the group id reused later.
        assert_eq!(qm.next_counter((41, 9)).unwrap(), 1);
        assert_eq!(qm.next_counter((41, 10)).unwrap(), 1);
        // What oslo.messaging wrote is read alike.
        std::fs::write(&qm.path, "41:5:10").unwrap();
        assert_eq!(qm.next_counter((41, 10)).unwrap(), 6);
        std::fs::write(&qm.path, "garbage").unwrap();
        assert_eq!(qm.next_counter((41, 10)).unwrap(), 1);
    }

    #[test]
    fn names_carry_host_process_and_counter() {
        let qm = manager();
        let first = qm.next_name().unwrap();
        let second = qm.next_name().unwrap();
        assert_eq!(first, "host1:nova-api:1");
        assert_eq!(second, "host1:nova-api:2");
    }

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let stat = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 0";
        assert_eq!(stat_field(stat, 5), Some(1234));
        assert_eq!(stat_field(stat, 22), Some(98765));
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(stat_field(&own, 22).is_some());
    }
}
