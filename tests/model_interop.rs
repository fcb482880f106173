//! The model file format against PyTorch's `nn.LSTM`: `scripts/lstm_interop.py` (numpy, plus
//! torch when installed) reproduces the head outputs of a model Rust wrote, and Rust reproduces
//! those of a model Python wrote, within 1e-5; the decoded forecasts (the residual head) agree with
//! the script's numpy decode.
//!
//! Needs `python3` with `numpy` and `safetensors`. Without them the test prints a SKIP notice and
//! passes, unless `SB_REQUIRE_PYTHON=1`, which makes it fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use shadowbucket::model::{LstmModel, ModelSpec, decode, step_one};

const TOLERANCE: f32 = 1e-5;

fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import numpy, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = "python3 with numpy and safetensors is not available";
        if std::env::var("SB_REQUIRE_PYTHON").as_deref() == Ok("1") {
            panic!("{msg}, and SB_REQUIRE_PYTHON=1");
        }
        eprintln!(
            "\n************************************************************\n\
             SKIP model_interop: {msg}\n\
             (pip install numpy safetensors; SB_REQUIRE_PYTHON=1 makes this fail)\n\
             ************************************************************\n"
        );
    }
    ok
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sb-interop-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn script(args: &[&str]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lstm_interop.py");
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}

fn write_tensors(path: &Path, tensors: &[(&str, Vec<usize>, &[f32])]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.to_string(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn read_tensor(bytes: &[u8], name: &str) -> Vec<f32> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Runs `x` (rows of `input_dim`) from the states `h0`, `c0` (`[layers, H]`) through step_one;
/// returns the head outputs of every step and the final `h`, `c`.
fn run_rust(m: &LstmModel, x: &[f32], h0: &[f32], c0: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let hd = m.spec.hidden;
    let mut st = vec![0f32; m.spec.state_dim()];
    for l in 0..m.spec.layers {
        st[2 * l * hd..(2 * l + 1) * hd].copy_from_slice(&h0[l * hd..(l + 1) * hd]);
        st[(2 * l + 1) * hd..(2 * l + 2) * hd].copy_from_slice(&c0[l * hd..(l + 1) * hd]);
    }
    let mut ys = Vec::new();
    let mut y = vec![0f32; m.spec.head_dim()];
    for row in x.chunks_exact(m.spec.input_dim()) {
        step_one(m, row, &mut st, &mut y);
        ys.extend_from_slice(&y);
    }
    let (mut h, mut c) = (Vec::new(), Vec::new());
    for l in 0..m.spec.layers {
        h.extend_from_slice(&st[2 * l * hd..(2 * l + 1) * hd]);
        c.extend_from_slice(&st[(2 * l + 1) * hd..(2 * l + 2) * hd]);
    }
    (ys, h, c)
}

fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= TOLERANCE,
            "{what}[{i}]: rust {x} vs python {y}"
        );
    }
}

#[test]
fn rust_model_runs_in_python() {
    if !python_ready() {
        return;
    }
    let dir = temp_dir("r2p");
    let spec = ModelSpec {
        hidden: 5,
        layers: 2,
        horizons: vec![1, 3],
        feeds: vec!["news".into()],
    };
    let mut m = LstmModel::random(spec, 42).unwrap();
    let mut rng = StdRng::seed_from_u64(43);
    for (mu, sd) in m.scaling.mean.iter_mut().zip(&mut m.scaling.std) {
        *mu = rng.random_range(-1.0..1.0);
        *sd = rng.random_range(0.5..2.0);
    }
    let model_path = dir.join("model.safetensors");
    m.save(&model_path).unwrap();
    let (steps, n, l, hd) = (7, m.spec.input_dim(), m.spec.layers, m.spec.hidden);
    let x: Vec<f32> = (0..steps * n)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let h0: Vec<f32> = (0..l * hd).map(|_| rng.random_range(-1.0..1.0)).collect();
    let c0: Vec<f32> = (0..l * hd).map(|_| rng.random_range(-1.0..1.0)).collect();
    let s: Vec<f32> = (0..steps).map(|_| rng.random_range(1.0..1000.0)).collect();
    let case = dir.join("case.safetensors");
    write_tensors(
        &case,
        &[
            ("x", vec![steps, n], &x),
            ("h0", vec![l, hd], &h0),
            ("c0", vec![l, hd], &c0),
            ("s", vec![steps], &s),
        ],
    );
    let out = dir.join("out.safetensors");
    script(&[
        "forward",
        model_path.to_str().unwrap(),
        case.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let (y, h, c) = run_rust(&m, &x, &h0, &c0);
    let bytes = std::fs::read(&out).unwrap();
    assert_close("y", &y, &read_tensor(&bytes, "y"));
    assert_close("h", &h, &read_tensor(&bytes, "h"));
    assert_close("c", &c, &read_tensor(&bytes, "c"));
    if SafeTensors::deserialize(&bytes)
        .unwrap()
        .tensor("y_torch")
        .is_ok()
    {
        assert_close("y_torch", &y, &read_tensor(&bytes, "y_torch"));
    }
    // The decode (the residual head) agrees with the script's numpy reference.
    let (fd, o) = (m.spec.forecast_dim(), m.spec.head_dim());
    let (mut f, mut sc) = (vec![0f32; fd], [0f32; 4]);
    let (mut forecast, mut scenario) = (Vec::new(), Vec::new());
    for t in 0..steps {
        decode(&y[t * o..(t + 1) * o], s[t], x[t * n], &mut f, &mut sc);
        forecast.extend_from_slice(&f);
        scenario.extend_from_slice(&sc);
    }
    let py = read_tensor(&bytes, "forecast");
    assert_eq!(py.len(), forecast.len());
    for (i, (a, b)) in forecast.iter().zip(&py).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "forecast[{i}]: rust {a} vs python {b}"
        );
    }
    assert!(forecast.iter().any(|&v| v > 0.0));
    assert_close("scenario", &scenario, &read_tensor(&bytes, "scenario"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn python_model_loads_in_rust() {
    if !python_ready() {
        return;
    }
    let dir = temp_dir("p2r");
    let model_path = dir.join("model.safetensors");
    let case = dir.join("case.safetensors");
    script(&[
        "write",
        model_path.to_str().unwrap(),
        case.to_str().unwrap(),
        "--hidden",
        "6",
        "--layers",
        "2",
        "--horizons",
        "1,5,10",
        "--feeds",
        "news,promo",
        "--seed",
        "3",
    ]);
    let m = LstmModel::load(&model_path).unwrap();
    assert_eq!(
        m.spec,
        ModelSpec {
            hidden: 6,
            layers: 2,
            horizons: vec![1, 5, 10],
            feeds: vec!["news".into(), "promo".into()],
        }
    );
    assert_eq!(m.scaling.scale_half_life, 144.0);
    let bytes = std::fs::read(&case).unwrap();
    let (y, h, c) = run_rust(
        &m,
        &read_tensor(&bytes, "x"),
        &read_tensor(&bytes, "h0"),
        &read_tensor(&bytes, "c0"),
    );
    assert_close("y", &y, &read_tensor(&bytes, "y"));
    assert_close("h", &h, &read_tensor(&bytes, "h"));
    assert_close("c", &c, &read_tensor(&bytes, "c"));
    // Rust writes it back identically (same tensors and scaling).
    let again = dir.join("again.safetensors");
    m.save(&again).unwrap();
    assert_eq!(LstmModel::load(&again).unwrap(), m);
    std::fs::remove_dir_all(&dir).unwrap();
}
