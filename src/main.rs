//! The `ringline` binary: `serve`, `user`, `probe`.

use ringline::config::{Command, ConfigAction};

fn main() {
    let cli = match ringline::config::parse_args() {
        Ok(cli) => cli,
        Err(message) => {
            eprintln!("ringline: {message}");
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => ringline::server::serve(*args),
        Command::User(args) => ringline::users::run(args),
        Command::Probe(args) => ringline::probe::run(args),
        Command::DenyIoUring { command } => deny_io_uring_then_exec(&command),
        Command::Config {
            action: ConfigAction::Check { file },
        } => ringline::config::parse_config_file(&file).and_then(|args| {
            let text = toml::to_string(&args).map_err(|e| e.to_string())?;
            println!("# {}: valid; effective settings:", file.display());
            print!("{text}");
            Ok(())
        }),
    };
    if let Err(message) = result {
        eprintln!("ringline: {message}");
        std::process::exit(1);
    }
}

fn deny_io_uring_then_exec(command: &[String]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    ringline_ring::deny_io_uring()
        .map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
    let error = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    Err(format!("cannot run {}: {error}", command[0]))
}
