//! `tka-server`: parses the command line into validated settings, has the library's
//! [`wiring`] build the server, and runs it until SIGTERM. All behaviour, the wiring included,
//! lives in tka-core and the `tka_server` library; this file only parses, calls and prints.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tka_server::cli::{Cli, Command, DrainArgs};
use tka_server::server::shutdown_on_signal;
use tka_server::{Settings, logging, wiring};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => print(tka_server::openapi::json()),
        Command::Crds => print(tka_core::kubernetes::crds_yaml().trim_end()),
        Command::Drain(args) => drain(&args),
        Command::Serve(args) => {
            let settings = match Settings::try_from(*args) {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("tka-server: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = logging::init(settings.log_format, &settings.log_filter) {
                eprintln!("tka-server: cannot set up logging: {e}");
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("tka-server: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "tka-server stopped");
                    eprintln!("tka-server: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `tka-server drain`: revoke everything, wait (bounded) for it to be gone.
fn drain(args: &DrainArgs) -> ExitCode {
    if let Err(e) = logging::init(tka_server::cli::LogFormat::Pretty, "info") {
        eprintln!("tka-server: cannot set up logging: {e}");
    }
    let timeout = match tka_core::duration::parse(&args.timeout) {
        Ok(d) if !d.is_negative() && !d.is_zero() => d.unsigned_abs(),
        _ => {
            eprintln!(
                "tka-server: --timeout {:?} is not a positive duration such as 60s",
                args.timeout
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tka-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let client = tka_server::kubernetes::client(args.kubeconfig.as_deref()).await?;
        let issuer = tka_core::kubernetes::KubernetesIssuer::new(
            client.clone(),
            tka_core::kubernetes::IssuerSettings::new(&args.namespace),
            Arc::new(tka_core::SystemClock),
        )?;
        tka_server::kubernetes::drain(&issuer, &client, &args.namespace, timeout).await
    });
    match result {
        Ok(left) if left.is_empty() => {
            eprintln!("tka-server: drained: no Session and no tka object is left");
            ExitCode::SUCCESS
        }
        Ok(left) => {
            eprintln!(
                "tka-server: {} Session(s) and {} labelled object(s) are still there; is a tka-server still running? Scale it to 0 and run drain again",
                left.sessions, left.labelled
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tka-server: drain failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tka-server: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(shutdown.clone()));
    wiring::server(&settings, shutdown).await?.run().await?;
    Ok(())
}
