//! Plots of a finished run (placeholder until the SVG plots land).

use std::path::{Path, PathBuf};

use crate::error::SimError;

/// Writes the plots of the run in `dir`; returns the files written.
pub fn plot_dir(dir: &Path) -> Result<Vec<PathBuf>, SimError> {
    Err(SimError::Usage(format!(
        "plotting {} is not implemented yet",
        dir.display()
    )))
}
