use std::process::ExitCode;

fn main() -> ExitCode {
    limit_malloc_arenas();
    agent_tokens::cli::main()
}

/// Caps glibc malloc at one arena unless the environment tunes it.
///
/// glibc gives threads that allocate at the same time their own arenas (up
/// to 8 per core), and memory freed in one is not reused by another. With
/// a million tokens, sled's pages pulled in by the actix workers and its own
/// threads then spread over several arenas. Measured under load with 1M
/// tokens: peak RSS 20-30 MiB higher with glibc's default than with 2, and
/// another ~20 MiB higher with 2 than with 1. What one arena costs: no
/// measurable change on verify and GET /me (their answers are remembered,
/// so they hardly allocate), about 10% on rotations with 1k tokens (still
/// well above the disk's sync rate), none measurable with 1M.
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
