//! The `ringline` binary: `serve`, `user`, `probe`.

use clap::Parser;
use ringline::config::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => ringline::server::serve(*args),
        Command::User(args) => ringline::users::run(args),
        Command::Probe(args) => ringline::probe::run(args),
    };
    if let Err(message) = result {
        eprintln!("ringline: {message}");
        std::process::exit(1);
    }
}
