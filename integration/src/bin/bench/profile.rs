//! Where a variant's added CPU time lands, from software clock samples (`perf record -e
//! cpu-clock -g`: hardware counters are not available here) of its Envoy, each side's
//! windows recorded apart.
//!
//! The Envoy binary has no symbols, so samples are sorted by what their call chains show:
//! - **module code**: the sample is in code V8 compiled from a module (JIT memory), or in the
//!   native module (`libmesh_bundle.so`);
//! - **host calls**: a module's code is on the stack and called what runs (Envoy's C++ behind
//!   the host call or the ABI callback, V8's glue between wasm and C++, an allocation);
//! - **entering the VM**: below a call into the VM (the frames that call module code), with
//!   no module code on the stack: V8's entry and exit;
//! - **the wasm filter**: not inside a VM call, but below Envoy's wasm filter (its frames the
//!   bare listener never runs, that lead to module code): proxy-wasm's contexts around the
//!   calls;
//! - **Envoy's own work**: everything else, as on the bare listener; what it costs beyond the
//!   bare listener is work the filters cause Envoy (a route chosen again, more headers, the
//!   wasm filter's objects made and freed per stream).
//!
//! The native module is built without frame pointers, so a chain is not followed past its
//! frames: what calls a hook is not known, and the two middle categories are found from V8's
//! frames only. For the native bundle, Envoy's dynamic-module filter around the hooks counts
//! as Envoy's own work, and so does a callback's sample whose chain stops before the module's
//! frame: its module code is exact, its host calls a floor.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::Error;
use crate::side::Side;

pub struct Profiler {
    dir: tempfile::TempDir,
}

impl Drop for Profiler {
    /// `MESH_BENCH_KEEP_PROFILE=1` keeps the recordings for `perf report`.
    fn drop(&mut self) {
        if std::env::var_os("MESH_BENCH_KEEP_PROFILE").is_some()
            && let Ok(kept) = tempfile::Builder::new()
                .prefix("mesh-profile-kept-")
                .tempdir()
        {
            let kept = kept.keep();
            for entry in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::rename(entry.path(), kept.join(entry.file_name()));
            }
            eprintln!("perf recordings kept in {}", kept.display());
        }
    }
}

/// The recordings of one measurement.
pub struct Recording {
    dir: PathBuf,
    pid: u32,
    files: Vec<(Side, PathBuf, f64)>,
    next: usize,
}

/// perf recording one window.
pub struct Recorder {
    child: Child,
    file: PathBuf,
}

impl Profiler {
    pub fn new() -> Result<Self, Error> {
        let probe = Command::new("perf")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("perf (scripts/bench.sh installs linux-perf): {e}"))?;
        if !probe.success() {
            return Err("perf --version failed".into());
        }
        Ok(Self {
            dir: tempfile::Builder::new().prefix("mesh-profile-").tempdir()?,
        })
    }

    pub fn start(&self, pid: u32) -> Recording {
        Recording {
            dir: self.dir.path().to_owned(),
            pid,
            files: Vec::new(),
            next: 0,
        }
    }
}

impl Recording {
    /// Starts recording the next window of `side`.
    pub fn record(&mut self, side: Side) -> Result<Recorder, Error> {
        self.next += 1;
        let name = match side {
            Side::Bare => "bare",
            Side::Variant => "variant",
        };
        let file = self
            .dir
            .join(format!("{}-{name}-{}.data", self.pid, self.next));
        let child = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-g", "-p"])
            .arg(self.pid.to_string())
            .arg("-o")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("perf record: {e}"))?;
        // perf attaches in a moment; the window's first requests may go unsampled.
        std::thread::sleep(std::time::Duration::from_millis(200));
        Ok(Recorder { child, file })
    }

    /// Stops `recorder` (SIGINT: perf writes its file and exits) and keeps its file with the
    /// window's CPU per request.
    pub fn stop(
        &mut self,
        side: Side,
        mut recorder: Recorder,
        cpu_us_per_request: f64,
    ) -> Result<(), Error> {
        let _ = Command::new("kill")
            .args(["-INT", &recorder.child.id().to_string()])
            .status();
        recorder.child.wait()?;
        self.files.push((side, recorder.file, cpu_us_per_request));
        Ok(())
    }

    /// Reads the recordings back and sorts their samples.
    pub fn summarize(&self) -> Result<Profile, Error> {
        let mut chains: HashMap<Side, Vec<Chain>> = HashMap::new();
        let mut cpu: HashMap<Side, Vec<f64>> = HashMap::new();
        for (side, file, cpu_us) in &self.files {
            let output = Command::new("perf")
                .args(["script", "-F", "comm,ip,dso", "-i"])
                .arg(file)
                .stderr(Stdio::null())
                .output()?;
            let text = String::from_utf8_lossy(&output.stdout);
            chains.entry(*side).or_default().extend(parse(&text));
            cpu.entry(*side).or_default().push(*cpu_us);
        }
        let variant = chains.remove(&Side::Variant).unwrap_or_default();
        let bare = chains.remove(&Side::Bare).unwrap_or_default();
        if variant.is_empty() || bare.is_empty() {
            return Err("perf recorded no samples".into());
        }
        let mean = |side| {
            let values = cpu.get(&side).cloned().unwrap_or_default();
            values.iter().sum::<f64>() / values.len().max(1) as f64
        };
        Ok(Profile::of(
            &variant,
            &bare,
            mean(Side::Variant),
            mean(Side::Bare),
        ))
    }
}

/// One sample's call chain, leaf first: each frame's address and whose code it is.
type Chain = Vec<(u64, Code)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    /// Code V8 compiled from a Wasm module.
    Jit,
    /// The native module's.
    Native,
    /// Envoy's, the C library's, the kernel's.
    Other,
}

impl Code {
    fn module(self) -> bool {
        self != Self::Other
    }
}

/// `perf script -F comm,ip,dso` output: a line naming the thread, then one frame per line
/// (`address (dso)`), a blank line between samples.
fn parse(text: &str) -> Vec<Chain> {
    text.split("\n\n")
        .filter_map(|sample| {
            let mut lines = sample.lines().filter(|l| !l.trim().is_empty());
            lines.next()?;
            let chain: Chain = lines
                .filter_map(|frame| {
                    let frame = frame.trim();
                    let (address, dso) = frame.split_once(' ')?;
                    let address = u64::from_str_radix(address, 16).ok()?;
                    Some((address, code_of(dso)))
                })
                .collect();
            (!chain.is_empty()).then_some(chain)
        })
        .collect()
}

/// Whose code a frame's file holds: V8's generated code is in no file perf knows.
fn code_of(dso: &str) -> Code {
    if dso.contains(NATIVE_MODULE) {
        Code::Native
    } else if dso.contains("perf-") || dso.contains("[JIT]") || dso.contains("unknown") {
        Code::Jit
    } else {
        Code::Other
    }
}

/// The native module's file name, as perf names the frames in it.
const NATIVE_MODULE: &str = "libmesh_bundle.so";

/// Where one side's CPU time per request went, by category, in µs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Split {
    pub module_code: f64,
    pub host_calls: f64,
    pub vm_entry: f64,
    pub wasm_filter: f64,
    pub envoy: f64,
}

impl Split {
    pub const NAMES: [&'static str; 5] = [
        "module code (wasm compiled by V8, or the native module's)",
        "host calls (Envoy's C++ behind them, V8's wasm/C++ glue, allocations for answers)",
        "entering and leaving the VM",
        "the wasm filter around the calls (proxy-wasm's contexts)",
        "Envoy's own work (codec, router, connection handling)",
    ];

    fn values(&self) -> [f64; 5] {
        [
            self.module_code,
            self.host_calls,
            self.vm_entry,
            self.wasm_filter,
            self.envoy,
        ]
    }
}

/// A variant's split and the bare listener's, and how many samples they rest on.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub variant: Split,
    pub bare: Split,
    pub samples: (usize, usize),
}

impl Profile {
    fn of(variant: &[Chain], bare: &[Chain], variant_us: f64, bare_us: f64) -> Self {
        // Code the bare listener runs too.
        let generic: HashSet<u64> = bare.iter().flatten().map(|(a, _)| *a).collect();
        // Below each stack that holds module code: the frame that called into it (V8's
        // entry), and the outermost frame the bare listener never runs (Envoy's wasm filter,
        // called by its filter manager). Samples in code the bare listener happens not to
        // have been sampled in are not taken for the wasm filter: only its entry frames are.
        let mut vm_callers = HashSet::new();
        let mut filter_entries = HashSet::new();
        for chain in variant {
            let Some(outer) = chain.iter().rposition(|(_, code)| *code == Code::Jit) else {
                continue;
            };
            if let Some((caller, _)) = chain.get(outer + 1) {
                vm_callers.insert(*caller);
            }
            if let Some((entry, _)) = chain.iter().rev().find(|(a, _)| !generic.contains(a)) {
                filter_entries.insert(*entry);
            }
        }
        let mut counts = [0usize; 5];
        for chain in variant {
            let category = match chain.first() {
                Some((_, code)) if code.module() => 0,
                _ if chain.iter().any(|(_, code)| code.module()) => 1,
                _ if chain.iter().any(|(a, _)| vm_callers.contains(a)) => 2,
                _ if chain.iter().any(|(a, _)| filter_entries.contains(a)) => 3,
                _ => 4,
            };
            if let Some(count) = counts.get_mut(category) {
                *count += 1;
            }
        }
        let share = |n: usize| n as f64 / variant.len().max(1) as f64 * variant_us;
        Self {
            variant: Split {
                module_code: share(counts[0]),
                host_calls: share(counts[1]),
                vm_entry: share(counts[2]),
                wasm_filter: share(counts[3]),
                envoy: share(counts[4]),
            },
            bare: Split {
                envoy: bare_us,
                ..Split::default()
            },
            samples: (variant.len(), bare.len()),
        }
    }

    /// A markdown table: each category's µs per request on the variant's listener and the
    /// bare one, and the difference.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| where | variant µs/req | bare µs/req | added µs/req |\n| --- | ---: | ---: | ---: |\n",
        );
        let (mut variant_total, mut bare_total) = (0.0, 0.0);
        for ((name, v), b) in Split::NAMES
            .iter()
            .zip(self.variant.values())
            .zip(self.bare.values())
        {
            variant_total += v;
            bare_total += b;
            let _ = writeln!(out, "| {name} | {v:.1} | {b:.1} | {:+.1} |", v - b);
        }
        let _ = writeln!(
            out,
            "| all | {variant_total:.1} | {bare_total:.1} | {:+.1} |",
            variant_total - bare_total
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample in the native module's own code is module code, one in Envoy called from it a
    /// host call, one elsewhere Envoy's own work, even through a frame that a native frame's
    /// (unreliable) chain shows as its caller.
    #[test]
    fn native_module_frames_are_module_code() {
        let module = "/work/main/dist/libmesh_bundle.so";
        let variant = parse(&format!(
            "envoy 1\n\t7f01 ({module})\n\t5a0a (/usr/bin/envoy)\n\n\
             envoy 2\n\t5a0b (/usr/bin/envoy)\n\t7f02 ({module})\n\t5a0a (/usr/bin/envoy)\n\n\
             envoy 3\n\t5a0c (/usr/bin/envoy)\n\t5a0a (/usr/bin/envoy)\n\n"
        ));
        assert_eq!(variant.len(), 3);
        let bare = parse("envoy 4\n\t5a0c (/usr/bin/envoy)\n\n");
        let profile = Profile::of(&variant, &bare, 3.0, 1.0);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(profile.variant.module_code, 1.0), "{profile:?}");
        assert!(close(profile.variant.host_calls, 1.0), "{profile:?}");
        assert!(close(profile.variant.envoy, 1.0), "{profile:?}");
        assert_eq!(
            code_of("(/usr/lib/x86_64-linux-gnu/libc.so.6)"),
            Code::Other
        );
        // No frame of the native module makes its caller "entering the VM".
        assert!(close(profile.variant.vm_entry, 0.0), "{profile:?}");
    }
}
