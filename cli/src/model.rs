//! The LSTM shipped with the command: `cli/models/synthetic-lstm.safetensors`, trained on the
//! synthetic workload's demand by the documented command (see the README):
//!
//! ```text
//! cargo run --release -p shadowbucket-cli -- train --synthetic --out cli/models/synthetic-lstm.safetensors
//! ```

use shadowbucket::model::LstmModel;

/// The shipped model.
///
/// # Errors
/// A message when it is not in this build.
pub fn shipped() -> Result<LstmModel, String> {
    Err("no LSTM is shipped in this build yet: choose a baseline with --predictor (ewma, last, seasonal, autopilot)".into())
}
