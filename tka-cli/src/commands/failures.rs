//! The end of a command that did several things (`login --all`, `logout --all`): every failure
//! reported, and one error whose exit code is the most telling among them.
//!
//! It owns that summary only. It must not decide what counts as a failure.

use crate::error::CliError;
use crate::exit::Exit;
use crate::output;

/// The end of a command that did several things: the printing's result when nothing failed, the
/// one failure, or each failure reported and a summary error with the most telling exit code.
pub(crate) fn several(
    mut failures: Vec<CliError>,
    printed: Result<(), CliError>,
) -> Result<(), CliError> {
    match failures.len() {
        0 => printed,
        1 => Err(failures.remove(0)),
        count => {
            for failure in &failures {
                output::report(failure, false);
            }
            let exit = failures
                .iter()
                .map(CliError::exit)
                .find(|e| *e != Exit::Failure)
                .unwrap_or(Exit::Failure);
            Err(CliError::Several { count, exit })
        }
    }
}
