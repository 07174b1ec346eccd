//! The `verve` binary: read config, start logging, bind, run.

use std::process::ExitCode;

use verve::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
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
