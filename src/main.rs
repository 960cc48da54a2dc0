use std::process::ExitCode;

fn main() -> ExitCode {
    limit_malloc_arenas();
    agent_tokens::cli::main()
}

/// Caps glibc malloc at one arena unless the environment tunes it.
///
/// glibc gives threads that allocate at the same time their own arenas (up
/// to 8 per core), and memory freed in one is not reused by another, so
/// peak memory grows with the threads that touch the store. One arena costs
/// the hot reads little: their answers are remembered and hardly allocate.
/// Figures, and that they predate fjall: docs/benchmarks.md ("Memory and
/// disk").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        return;
    }
    // SAFETY: runs first in main, before any other thread exists; mallopt
    // only changes a tuning parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
