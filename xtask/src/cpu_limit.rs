//! `cargo xtask bench --instance-cpus F`: each server instance in a Linux control group of its
//! own, limited to `F` of one core (a CFS quota).
//!
//! On one machine, server instances share its cores with each other, with the database and
//! with the load client, so a second instance only splits the same CPU time. Behind a load
//! balancer each instance has cores of its own. A quota per instance measures that case:
//! whether the design lets a second instance add capacity (no in-process state, one database),
//! while the database and the client keep the rest of the machine.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Quota period: short, so that a throttled instance waits milliseconds, not a tenth of a second.
const PERIOD_US: u64 = 10_000;

/// A control group holding one process; removed on drop (after the process has exited).
pub struct CpuLimit {
    dir: PathBuf,
}

impl CpuLimit {
    /// Moves process `pid` (all its threads) into a new control group named `name`, limited to
    /// `cores` of one core. Needs a writable cgroup hierarchy (root, cgroup v1 `cpu` or v2).
    pub fn apply(name: &str, pid: u32, cores: f64) -> Result<CpuLimit> {
        if !(cores > 0.0 && cores.is_finite()) {
            bail!("--instance-cpus must be a positive number of cores, such as 0.5");
        }
        let quota = ((cores * PERIOD_US as f64).round() as u64).max(1_000);
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let dir = if v2 {
            PathBuf::from("/sys/fs/cgroup").join(name)
        } else {
            PathBuf::from("/sys/fs/cgroup/cpu").join(name)
        };
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "creating the control group {} (--instance-cpus needs root and a writable cgroup hierarchy)",
                dir.display()
            )
        })?;
        let limit = CpuLimit { dir };
        if v2 {
            if !limit.dir.join("cpu.max").exists() {
                // The cpu controller is not yet enabled for the root's children.
                std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu")
                    .context("enabling the cpu controller in /sys/fs/cgroup")?;
            }
            limit.write("cpu.max", &format!("{quota} {PERIOD_US}"))?;
        } else {
            limit.write("cpu.cfs_period_us", &PERIOD_US.to_string())?;
            limit.write("cpu.cfs_quota_us", &quota.to_string())?;
        }
        limit.write("cgroup.procs", &pid.to_string())?;
        Ok(limit)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .with_context(|| format!("writing {value} to {}", path.display()))
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // A group can be removed once its last process has gone, which takes a moment after
        // the kill.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove the control group {}", self.dir.display());
    }
}
