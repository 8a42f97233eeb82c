//! The `ringport` binary: `serve`, `user`, `probe`, `config`, `version`.

use ringport::config::{Command, ConfigAction};

fn main() {
    // Before any thread: large buffers (values, pipelines) go back to the kernel when freed.
    ringport_ring::release_large_allocations(128 * 1024);
    let cli = match ringport::config::parse_args() {
        Ok(cli) => cli,
        Err(message) => {
            eprintln!("ringport: {message}");
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => ringport::server::serve(*args),
        Command::User(args) => ringport::users::run(args),
        Command::Probe(args) => ringport::probe::run(args),
        Command::Version => {
            print!("{}", ringport::version::text());
            Ok(())
        }
        Command::DenyIoUring { command } => deny_io_uring_then_exec(&command),
        Command::Config {
            action: ConfigAction::Check { file },
        } => ringport::server::check_config(&file),
    };
    if let Err(message) = result {
        eprintln!("ringport: {message}");
        std::process::exit(1);
    }
}

fn deny_io_uring_then_exec(command: &[String]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    ringport_ring::deny_io_uring()
        .map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
    let error = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    Err(format!("cannot run {}: {error}", command[0]))
}
