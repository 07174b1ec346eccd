//! The `verve` binary: read config, start logging, bind, run.

use std::process::ExitCode;

use verve::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    release_window_maps_on_free();
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            if e.exit_code == 0 {
                print!("{}", e.message);
            } else {
                eprintln!("{}", e.message);
            }
            return ExitCode::from(e.exit_code as u8);
        }
    };
    if let Err(e) = verve::countlog::install(&config.log_file) {
        eprintln!("verve: --log-file {}: {e}", config.log_file.display());
        return ExitCode::from(2);
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("verve: --listen {}: {e}", config.listen);
            return ExitCode::from(2);
        }
    };
    let admin = match config.admin_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(admin) => Some(admin),
            Err(e) => {
                eprintln!("verve: --admin-listen {addr}: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let shutdown = match verve::shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(e) => {
            eprintln!("verve: cannot listen for SIGTERM/SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    match verve::run(config, listener, admin, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Each window's id map (hundreds of KiB per shard) is freed when the window is reported.
/// glibc raises its mmap threshold after the first such free and keeps later maps in its heap,
/// so RSS swung by ±25 % from window to window in a soak; with the threshold fixed at 128 KiB
/// large maps are mmapped on their own and returned to the system when freed.
fn release_window_maps_on_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; any value is valid for glibc.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
