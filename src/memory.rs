//! Handing freed memory back to the system.

/// Returns the allocator's free pages to the system, off the async workers when there are
/// any: glibc's `malloc_trim` walks every arena and can take milliseconds on a large heap.
pub fn release_freed() {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(trim)),
        Err(_) => trim(),
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: `malloc_trim` takes the arena locks itself; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
