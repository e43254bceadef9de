//! The output directory of a run (`tpc chaos`, `tpc bench`).

use std::path::Path;

/// Creates `dir`, which must be new or empty: old data would answer a new run's request ids from the
/// last run's log, and old results would mix with new ones.
pub fn fresh_output_dir(dir: &Path) -> std::io::Result<()> {
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} is not empty: choose another output directory",
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir)
}
