//! An empty proxy-wasm HTTP filter: a root context and an HTTP context that override
//! nothing, so every request continues. Built with the SDK alone (no adapter, no policy
//! crate), it is the benchmark's floor: what any Rust proxy-wasm filter costs Envoy per
//! request (`scripts/bench.sh`), and the smallest module the SDK makes.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Pass))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Pass;

impl Context for Pass {}

impl HttpContext for Pass {}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}
