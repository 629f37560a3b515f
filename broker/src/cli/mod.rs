//! The `sluice-broker` command line for everyday work on a running
//! cluster: `topic` and `cluster` over the Kafka protocol (any Kafka
//! listener), `plugin` over the HTTP admin API. Human tables by default,
//! `--output json` for scripts; exit codes are [`ExitStatus`].

pub mod kafka;
pub mod plugin;
pub mod plugin_test;

pub use plugin::PluginCommand;

/// What a failed command exits with, so that scripts can tell a refusal
/// from an unreachable broker. (clap exits with 2 for bad usage.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// The broker answered with an error (unknown topic, invalid config,
    /// not authorized, ...), or the input was unusable.
    Refused = 1,
    /// No broker could be reached (or the connection failed).
    Unreachable = 3,
    /// The broker did not answer in time: what was asked may or may not
    /// have been done.
    NoAnswer = 4,
}

/// A command's failure: the message printed, and the exit status.
#[derive(Debug)]
pub struct CliError {
    pub status: ExitStatus,
    pub error: anyhow::Error,
}

impl CliError {
    pub fn refused(error: impl Into<anyhow::Error>) -> CliError {
        CliError {
            status: ExitStatus::Refused,
            error: error.into(),
        }
    }
}

impl From<sluice_client::admin::AdminError> for CliError {
    fn from(e: sluice_client::admin::AdminError) -> CliError {
        use sluice_client::ClientError;
        use sluice_client::admin::AdminError;
        let status = match e {
            AdminError::Broker { .. } => ExitStatus::Refused,
            AdminError::Client(ClientError::Timeout { .. }) => ExitStatus::NoAnswer,
            AdminError::Client(_) => ExitStatus::Unreachable,
        };
        CliError {
            status,
            error: e.into(),
        }
    }
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document on stdout.
    Json,
}

/// Prints rows under headers in aligned columns (as kcat and rpk do: no
/// borders, two spaces between columns).
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", table(headers, rows));
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["orders".to_string(), "12".to_string(), "3".to_string()],
            vec!["a".to_string(), "1".to_string(), "".to_string()],
        ];
        assert_eq!(
            table(&["NAME", "PARTITIONS", "RF"], &rows),
            "NAME    PARTITIONS  RF\norders  12          3\na       1\n"
        );
    }
}
