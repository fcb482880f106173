//! Saving and loading an [`LstmModel`] as a safetensors file that PyTorch reads as is.
//!
//! **Tensors** (names and layouts exactly those of a PyTorch `nn.LSTM` state dict, with the head
//! an `nn.Linear` named `head`; gate order `i, f, g, o` along the rows):
//!
//! | name | shape |
//! |---|---|
//! | `weight_ih_l{k}` | `[4H, in_k]` (`in_0` = the features, `in_k` = `H` above) |
//! | `weight_hh_l{k}` | `[4H, H]` |
//! | `bias_ih_l{k}`, `bias_hh_l{k}` | `[4H]` |
//! | `head.weight` | `[head_dim, H]` |
//! | `head.bias` | `[head_dim]` |
//!
//! Written as F32; read as F32 or F64 (converted to F32). Any other tensor is refused.
//!
//! **Metadata** (all strings, as safetensors requires):
//!
//! | key | value |
//! |---|---|
//! | `format` | `shadowbucket-lstm` |
//! | `format_version` | `2` |
//! | `head` | `residual-v1`: the head form [`decode`](super::decode) reads (see below) |
//! | `hidden`, `layers` | integers |
//! | `horizons` | comma list of integers (`1,5,10,15`) |
//! | `feeds` | comma list of feed names (empty for none) |
//! | `features` | comma list; must equal [`ModelSpec::feature_names`] |
//! | `feature_mean`, `feature_std` | the feature scaling: a JSON array or a comma list of floats |
//! | `scale_half_life` | float, intervals |
//! | `quantiles`, `scenario_edges`, `scenarios` | informational (`0.5,0.9,0.99`, the edges, names) |
//!
//! **Versions.** Version 2 (this build) added the residual head (`head` = `residual-v1`: the
//! mean's and the p50's `z` are the step's usage feature plus the head output; see the
//! [model docs](super)). Version 1 files hold the earlier plain head (`z50 = y1`,
//! `mean = s·softplus(y0)`); the same weights mean different forecasts under the residual head,
//! so they are refused with an error that says so (retrain, or re-export the model with the
//! residual head), never silently decoded the new way.
//!
//! Files are written atomically: a temporary file in the same directory, synced, then renamed
//! over the target.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::spec::{ModelSpec, SCENARIO_EDGES, SCENARIOS};
use super::weights::{FeatureScaling, LayerWeights, LstmModel};
use crate::error::{Error, Result};

/// The `format` metadata value.
pub const FORMAT: &str = "shadowbucket-lstm";
/// The `format_version` metadata value this code writes and reads.
pub const FORMAT_VERSION: &str = "2";
/// The `head` metadata value: the head form this code writes and reads.
pub const HEAD: &str = "residual-v1";

fn bad(msg: impl Into<String>) -> Error {
    Error::invalid(format!("model file: {}", msg.into()))
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl LstmModel {
    /// The tensors in PyTorch's names, each as `(name, shape, values)`, in a fixed order.
    pub fn named_tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let s = &self.spec;
        let g = s.gates();
        let mut out = Vec::with_capacity(4 * self.layers.len() + 2);
        for (k, w) in self.layers.iter().enumerate() {
            out.push((
                format!("weight_ih_l{k}"),
                vec![g, s.layer_input_dim(k)],
                &w.w_ih[..],
            ));
            out.push((format!("weight_hh_l{k}"), vec![g, s.hidden], &w.w_hh[..]));
            out.push((format!("bias_ih_l{k}"), vec![g], &w.b_ih[..]));
            out.push((format!("bias_hh_l{k}"), vec![g], &w.b_hh[..]));
        }
        out.push((
            "head.weight".into(),
            vec![s.head_dim(), s.hidden],
            &self.head_w,
        ));
        out.push(("head.bias".into(), vec![s.head_dim()], &self.head_b));
        out
    }

    /// The metadata this model is written with (see the module docs).
    pub fn safetensors_metadata(&self) -> HashMap<String, String> {
        let s = &self.spec;
        let floats = |v: &[f32]| {
            serde_json::to_string(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("format_version".into(), FORMAT_VERSION.into()),
            ("head".into(), HEAD.into()),
            ("hidden".into(), s.hidden.to_string()),
            ("layers".into(), s.layers.to_string()),
            ("horizons".into(), join(&s.horizons)),
            ("feeds".into(), s.feeds.join(",")),
            ("features".into(), s.feature_names().join(",")),
            ("feature_mean".into(), floats(&self.scaling.mean)),
            ("feature_std".into(), floats(&self.scaling.std)),
            (
                "scale_half_life".into(),
                self.scaling.scale_half_life.to_string(),
            ),
            ("quantiles".into(), "0.5,0.9,0.99".into()),
            ("scenario_edges".into(), join(&SCENARIO_EDGES)),
            ("scenarios".into(), SCENARIOS.join(",")),
        ])
    }

    /// The model as a safetensors file's bytes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the model fails [`LstmModel::validate`].
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let tensors = self.named_tensors();
        let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| f32_bytes(v)).collect();
        let views = tensors
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), b)| {
                TensorView::new(Dtype::F32, shape.clone(), b)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| bad(format!("tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, Some(self.safetensors_metadata()))
            .map_err(|e| bad(format!("serializing: {e}")))
    }

    /// A model from a safetensors file's bytes (see the module docs for what it must hold).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] saying what is wrong: not a safetensors file, unknown format or
    /// version, missing or unparsable metadata, a feature list that differs from the spec's, a
    /// missing, unexpected or wrongly shaped tensor, a dtype other than F32/F64, a non-finite
    /// value, or any other [`LstmModel::validate`] failure.
    pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let empty = Default::default();
        let meta: &HashMap<String, String> = header.metadata().as_ref().unwrap_or(&empty);
        let get = |k: &str| {
            meta.get(k)
                .map(String::as_str)
                .ok_or_else(|| bad(format!("metadata `{k}` is missing")))
        };
        let format = get("format")?;
        if format != FORMAT {
            return Err(bad(format!(
                "unknown format {format:?} (expected {FORMAT:?})"
            )));
        }
        let version = get("format_version")?;
        if version == "1" {
            return Err(bad(format!(
                "format_version \"1\" holds the plain (non-residual) head, which this build no \
                 longer decodes; it reads format_version {FORMAT_VERSION:?} with head {HEAD:?}: \
                 retrain the model (or re-export it with the residual head)"
            )));
        }
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "unsupported format_version {version:?} (this build reads {FORMAT_VERSION:?})"
            )));
        }
        let head = get("head")?;
        if head != HEAD {
            return Err(bad(format!(
                "unknown head {head:?} (this build decodes {HEAD:?})"
            )));
        }
        let int = |k: &str| -> Result<usize> {
            let v = get(k)?;
            v.trim()
                .parse()
                .map_err(|_| bad(format!("metadata `{k}` = {v:?} is not a whole number")))
        };
        let list = |k: &str| -> Result<Vec<String>> {
            let v = get(k)?.trim();
            Ok(if v.is_empty() {
                Vec::new()
            } else {
                v.split(',').map(|s| s.trim().to_string()).collect()
            })
        };
        let horizons = list("horizons")?
            .iter()
            .map(|h| {
                h.parse::<u32>()
                    .map_err(|_| bad(format!("metadata `horizons`: {h:?} is not a whole number")))
            })
            .collect::<Result<Vec<_>>>()?;
        let spec = ModelSpec {
            hidden: int("hidden")?,
            layers: int("layers")?,
            horizons,
            feeds: list("feeds")?,
        };
        spec.validate().map_err(|e| bad(e.to_string()))?;
        let features = list("features")?;
        let expected = spec.feature_names();
        if features != expected {
            return Err(bad(format!(
                "feature list mismatch: the file has [{}], this build's spec has [{}]",
                features.join(","),
                expected.join(",")
            )));
        }
        let floats = |k: &str| -> Result<Vec<f32>> {
            let v = get(k)?.trim();
            let parsed: Option<Vec<f64>> = if v.starts_with('[') {
                serde_json::from_str(v).ok()
            } else if v.is_empty() {
                Some(Vec::new())
            } else {
                v.split(',').map(|x| x.trim().parse().ok()).collect()
            };
            let parsed =
                parsed.ok_or_else(|| bad(format!("metadata `{k}` is not a list of numbers")))?;
            if parsed.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!("metadata `{k}` holds a non-finite value")));
            }
            Ok(parsed.into_iter().map(|x| x as f32).collect())
        };
        let half_life = get("scale_half_life")?;
        let scaling = FeatureScaling {
            mean: floats("feature_mean")?,
            std: floats("feature_std")?,
            scale_half_life: half_life.trim().parse().map_err(|_| {
                bad(format!(
                    "metadata `scale_half_life` = {half_life:?} is not a number"
                ))
            })?,
        };
        let n = spec.input_dim();
        for (k, v) in [
            ("feature_mean", &scaling.mean),
            ("feature_std", &scaling.std),
        ] {
            if v.len() != n {
                return Err(bad(format!(
                    "metadata `{k}` has {} values, the model has {n} features",
                    v.len()
                )));
            }
        }

        let mut used = 0usize;
        let mut tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor {name} is missing")))?;
            used += 1;
            if t.shape() != shape {
                return Err(bad(format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    t.shape()
                )));
            }
            let v: Vec<f32> = match t.dtype() {
                Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F64 => t
                    .data()
                    .chunks_exact(8)
                    .map(|b| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        f64::from_le_bytes(a) as f32
                    })
                    .collect(),
                other => {
                    return Err(bad(format!(
                        "tensor {name} has dtype {other:?}; F32 or F64 expected"
                    )));
                }
            };
            if v.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!("tensor {name} holds a non-finite value")));
            }
            Ok(v)
        };
        let g = spec.gates();
        let h = spec.hidden;
        let mut layers = Vec::with_capacity(spec.layers);
        for k in 0..spec.layers {
            layers.push(LayerWeights {
                w_ih: tensor(&format!("weight_ih_l{k}"), &[g, spec.layer_input_dim(k)])?,
                w_hh: tensor(&format!("weight_hh_l{k}"), &[g, h])?,
                b_ih: tensor(&format!("bias_ih_l{k}"), &[g])?,
                b_hh: tensor(&format!("bias_hh_l{k}"), &[g])?,
            });
        }
        let head_w = tensor("head.weight", &[spec.head_dim(), h])?;
        let head_b = tensor("head.bias", &[spec.head_dim()])?;
        if used != st.len() {
            let mut extra: Vec<&str> = st
                .names()
                .into_iter()
                .filter(|n| !is_model_tensor(n, spec.layers))
                .collect();
            extra.sort_unstable();
            return Err(bad(format!("unexpected tensors: {}", extra.join(", "))));
        }
        let model = LstmModel {
            spec,
            layers,
            head_w,
            head_b,
            scaling,
        };
        model.validate().map_err(|e| bad(e.to_string()))?;
        Ok(model)
    }

    /// Writes the model to `path` as safetensors, atomically (a temporary file next to it,
    /// synced, then renamed over it).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid model; [`Error::Io`] when writing fails.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_safetensors_bytes()?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{}: not a file path", path.display())))?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(path, e));
        }
        // Make the rename durable; some platforms cannot open a directory, which is no error.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Reads a model written by [`LstmModel::save`] (or by PyTorch, see the module docs).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; [`Error::BadFile`] with the reasons of
    /// [`LstmModel::from_safetensors_bytes`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_safetensors_bytes(&bytes).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::bad_file(path, m),
            other => other,
        })
    }
}

fn is_model_tensor(name: &str, layers: usize) -> bool {
    if name == "head.weight" || name == "head.bias" {
        return true;
    }
    ["weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l"]
        .iter()
        .any(|p| {
            name.strip_prefix(p)
                .and_then(|k| k.parse::<usize>().ok())
                .is_some_and(|k| k < layers)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> LstmModel {
        let mut m = LstmModel::random(
            ModelSpec {
                hidden: 4,
                layers: 2,
                horizons: vec![1, 3],
                feeds: vec!["news".into()],
            },
            7,
        )
        .unwrap();
        m.scaling.mean[0] = 0.25;
        m.scaling.std[1] = 3.5;
        m.scaling.scale_half_life = 144.0;
        m
    }

    fn err_of(bytes: &[u8]) -> String {
        match LstmModel::from_safetensors_bytes(bytes) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Rewrites a model file with the given tensors (name -> (dtype, shape, bytes)) and metadata.
    fn rebuild(
        m: &LstmModel,
        edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>, &mut HashMap<String, String>),
    ) -> Vec<u8> {
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = m
            .named_tensors()
            .into_iter()
            .map(|(n, s, v)| (n, Dtype::F32, s, f32_bytes(v)))
            .collect();
        let mut meta = m.safetensors_metadata();
        edit(&mut tensors, &mut meta);
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, Some(meta)).unwrap()
    }

    #[test]
    fn round_trip_bytes_and_file() {
        let m = model();
        let bytes = m.to_safetensors_bytes().unwrap();
        assert_eq!(LstmModel::from_safetensors_bytes(&bytes).unwrap(), m);
        let dir = std::env::temp_dir().join(format!("sb-model-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        m.save(&path).unwrap();
        m.save(&path).unwrap(); // overwriting is fine
        assert_eq!(LstmModel::load(&path).unwrap(), m);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn f64_tensors_and_comma_lists_are_accepted() {
        let m = model();
        let bytes = rebuild(&m, |t, meta| {
            for (_, d, _, b) in t.iter_mut() {
                *d = Dtype::F64;
                *b = b
                    .chunks_exact(4)
                    .flat_map(|c| {
                        f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()
                    })
                    .collect();
            }
            meta.insert("feature_std".into(), join(&m.scaling.std));
        });
        assert_eq!(LstmModel::from_safetensors_bytes(&bytes).unwrap(), m);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let m = model();
        assert!(err_of(b"garbage").contains("not a safetensors file"));
        let e = err_of(&rebuild(&m, |_, meta| {
            meta.insert("format".into(), "other".into());
        }));
        assert!(e.contains("unknown format"), "{e}");
        let e = err_of(&rebuild(&m, |_, meta| {
            meta.insert("format_version".into(), "3".into());
        }));
        assert!(e.contains("unsupported format_version"), "{e}");
        // A version 1 file (plain head) is refused, saying why.
        let e = err_of(&rebuild(&m, |_, meta| {
            meta.insert("format_version".into(), "1".into());
            meta.remove("head");
        }));
        assert!(
            e.contains("plain (non-residual) head") && e.contains("retrain"),
            "{e}"
        );
        let e = err_of(&rebuild(&m, |_, meta| {
            meta.insert("head".into(), "plain".into());
        }));
        assert!(e.contains("unknown head"), "{e}");
        let e = err_of(&rebuild(&m, |_, meta| {
            meta.remove("head");
        }));
        assert!(e.contains("`head` is missing"), "{e}");
        let e = err_of(&rebuild(&m, |_, meta| {
            meta.remove("hidden");
        }));
        assert!(e.contains("`hidden` is missing"), "{e}");
        let e = err_of(&rebuild(&m, |_, meta| {
            meta.insert("features".into(), "usage,requests".into());
        }));
        assert!(e.contains("feature list mismatch"), "{e}");
        let e = err_of(&rebuild(&m, |t, _| {
            t.retain(|(n, ..)| n != "bias_hh_l1");
        }));
        assert!(e.contains("tensor bias_hh_l1 is missing"), "{e}");
        let e = err_of(&rebuild(&m, |t, _| {
            let w = t.iter_mut().find(|(n, ..)| n == "head.weight").unwrap();
            w.2 = vec![w.2[1], w.2[0]];
        }));
        assert!(e.contains("tensor head.weight has shape"), "{e}");
        let e = err_of(&rebuild(&m, |t, _| {
            t[0].3[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }));
        assert!(e.contains("non-finite"), "{e}");
        let e = err_of(&rebuild(&m, |_, meta| {
            meta.insert("feature_mean".into(), "[1.0, 2.0]".into());
        }));
        assert!(e.contains("`feature_mean` has 2 values"), "{e}");
        let e = err_of(&rebuild(&m, |t, _| {
            t.push(("extra".into(), Dtype::F32, vec![1], vec![0; 4]));
        }));
        assert!(e.contains("unexpected tensors: extra"), "{e}");
        let e = err_of(&rebuild(&m, |t, _| {
            let (_, d, s, b) = t.iter_mut().find(|(n, ..)| n == "head.bias").unwrap();
            *d = Dtype::I32;
            assert_eq!(b.len(), 4 * s[0]);
        }));
        assert!(e.contains("dtype"), "{e}");
        // A file path in the error.
        let path = std::env::temp_dir().join(format!("sb-model-bad-{}", std::process::id()));
        std::fs::write(&path, b"nope").unwrap();
        match LstmModel::load(&path) {
            Err(Error::BadFile { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(reason.contains("not a safetensors file"));
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            LstmModel::load(path.join("missing")),
            Err(Error::Io { .. })
        ));
    }
}
