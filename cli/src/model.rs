//! The LSTM shipped with the command, `cli/models/synthetic-lstm.safetensors`: trained on the
//! synthetic workload's demand (300 customers, four days from a Monday, one-minute windows) by
//! the one documented command that regenerates it:
//!
//! ```text
//! cargo run --release -p shadowbucket-cli -- train --synthetic --out cli/models/synthetic-lstm.safetensors
//! ```
//!
//! It is compiled into the binary, so `simulate` needs no file and nothing is downloaded.

use shadowbucket::model::LstmModel;

/// The shipped model's bytes (safetensors).
const SHIPPED: &[u8] = include_bytes!("../models/synthetic-lstm.safetensors");

/// The shipped model.
///
/// # Errors
/// A message when the embedded file cannot be read as a model (a stale file after a format
/// change: regenerate it with the command above).
pub fn shipped() -> Result<LstmModel, String> {
    LstmModel::from_safetensors_bytes(SHIPPED).map_err(|e| {
        format!("the shipped model cannot be read ({e}): regenerate cli/models/synthetic-lstm.safetensors")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_model_loads() {
        let m = super::shipped().unwrap();
        assert!(m.validate().is_ok());
    }
}
