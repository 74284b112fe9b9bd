//! Integration tests: the real binary on port 0 with a temporary database, driven by yrs
//! clients over real WebSockets.

mod support;

// The fuzz targets' checks, shared as source with `fuzz/` (see tests/it/decoders.rs).
#[path = "../../fuzz/checks.rs"]
mod checks;

/// The system allocator, recording the largest single request made on each thread, so the
/// decoder tests can bound what a small input makes the server allocate (cargo-fuzz gets the
/// same bound from libFuzzer's `-malloc_limit_mb`). Nothing else changes.
struct LargestAllocation;

thread_local! {
    static LARGEST_ALLOCATION: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note_allocation(bytes: usize) {
    // Const-initialised and without a destructor: never allocates, usable at thread exit.
    let _ = LARGEST_ALLOCATION.try_with(|largest| largest.set(largest.get().max(bytes)));
}

/// The largest allocation requested on this thread since the last call (which resets it).
fn take_largest_allocation() -> usize {
    LARGEST_ALLOCATION.with(|largest| largest.replace(0))
}

// SAFETY: every call is forwarded unchanged to `System`; recording a size allocates nothing.
unsafe impl std::alloc::GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        note_allocation(layout.size());
        std::alloc::System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        note_allocation(layout.size());
        std::alloc::System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        std::alloc::System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

mod api;
mod auth;
mod awareness;
mod cli;
mod crash_loop;
mod decoders;
mod demo;
mod durability;
mod floods;
mod hocuspocus;
mod hostile;
mod imports;
mod limits;
mod ot;
mod postgres_faults;
mod property;
mod refusals;
mod storage;
mod sync;
