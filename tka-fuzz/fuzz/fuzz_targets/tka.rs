//! libFuzzer entry point for every target of `tka-fuzz`: `TKA_FUZZ_TARGET` names the one to
//! run (one binary links once, instead of once per target). Every Rust allocation is counted
//! and an input that makes the process hold more than `TKA_FUZZ_MAX_HEAP_MB` (default 256) at
//! once aborts with a report, so unbounded allocation is a finding, not a slow run.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;

struct Bounded;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(256 << 20);

// SAFETY: forwards every call to the system allocator unchanged; only counts the bytes.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        if live > LIMIT.load(Ordering::Relaxed) {
            eprintln!(
                "tka-fuzz: {live} bytes held at once (allocating {}): unbounded allocation",
                layout.size()
            );
            std::process::abort();
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let grow = new_size - layout.size();
            let live = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
            if live > LIMIT.load(Ordering::Relaxed) {
                eprintln!(
                    "tka-fuzz: {live} bytes held at once (growing to {new_size}): unbounded allocation"
                );
                std::process::abort();
            }
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

fn selected() -> tka_fuzz::Target {
    static TARGET: OnceLock<tka_fuzz::Target> = OnceLock::new();
    *TARGET.get_or_init(|| {
        if let Some(mb) = std::env::var("TKA_FUZZ_MAX_HEAP_MB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            LIMIT.store(mb << 20, Ordering::Relaxed);
        }
        let name = std::env::var("TKA_FUZZ_TARGET").unwrap_or_default();
        match tka_fuzz::target(&name) {
            Some(target) => target,
            None => {
                let names: Vec<&str> = tka_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
                eprintln!("set TKA_FUZZ_TARGET to one of: {}", names.join(", "));
                std::process::exit(2);
            }
        }
    })
}

fuzz_target!(|data: &[u8]| selected()(data));
