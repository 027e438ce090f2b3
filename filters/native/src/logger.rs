//! The `log` crate's records to Envoy's log (`dynamic_modules` component), at the level Envoy
//! has for it (`--component-log-level dynamic_modules:debug` shows the per-request lines).

use crate::abi::{self, LogLevel};

struct EnvoyLog;

static LOGGER: EnvoyLog = EnvoyLog;

fn level(level: log::Level) -> LogLevel {
    match level {
        log::Level::Error => LogLevel::Error,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Info => LogLevel::Info,
        log::Level::Debug => LogLevel::Debug,
        log::Level::Trace => LogLevel::Trace,
    }
}

impl log::Log for EnvoyLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        abi::log_enabled(level(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            abi::log(level(record.level()), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once per process; later calls do nothing).
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        follow_envoy();
    }
}

/// Makes `log`'s max level the most verbose one Envoy logs the component at, so a line Envoy
/// would drop is not even formatted: a stage's per-request debug line costs more to format
/// than its decision (the canary's, ~700 instructions, `bench/instructions.md`). Run at load
/// and on every worker tick, so a level changed on Envoy's admin page (`/logging`) takes
/// effect within a tick period.
pub fn follow_envoy() {
    let most_verbose = [
        log::Level::Trace,
        log::Level::Debug,
        log::Level::Info,
        log::Level::Warn,
        log::Level::Error,
    ]
    .into_iter()
    .find(|&l| abi::log_enabled(level(l)));
    log::set_max_level(most_verbose.map_or(log::LevelFilter::Off, |l| l.to_level_filter()));
}
