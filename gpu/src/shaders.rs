//! The WGSL kernels, their parameter structs, and their specialization per model.
//!
//! Each kernel is one file under the repository's `shaders/`, its bindings listed in its header comment. Sizes
//! that WGSL needs at compile time (the hidden size, for private arrays and workgroup memory) are
//! `const` lines with defaults; [`specialize`] rewrites them for a model and adapter, so every
//! pipeline is compiled for its exact shape (loops with constant trip counts, state in
//! registers) and the files themselves stay valid WGSL that the naga test checks (the two head
//! kernels together with `decode.wgsl`, their shared decode helpers, which is appended to them).

use bytemuck::{Pod, Zeroable};

/// `lstm_step.wgsl`: one LSTM layer for one chunk of customers, one invocation per customer (the
/// simple kernel, [`crate::StepKernel::Simple`]).
pub const LSTM_STEP: &str = include_str!("../../shaders/lstm_step.wgsl");
/// `lstm_step_tiled.wgsl`: one LSTM layer for one chunk of customers, register-tiled over tiles of
/// [`TiledShape::tile`] customers (the default kernel, [`crate::StepKernel::Tiled`]).
/// With `decode.wgsl` appended (the fused heads' decode).
pub const LSTM_STEP_TILED: &str = concat!(
    include_str!("../../shaders/lstm_step_tiled.wgsl"),
    include_str!("../../shaders/decode.wgsl")
);
/// `heads.wgsl`: the output heads, full or decoded for one pick; with `decode.wgsl` appended.
pub const HEADS: &str = concat!(
    include_str!("../../shaders/heads.wgsl"),
    include_str!("../../shaders/decode.wgsl")
);
/// `relayout.wgsl`: state between the store's customer-major and the device's feature-major
/// layout.
pub const RELAYOUT: &str = include_str!("../../shaders/relayout.wgsl");

/// Every kernel: `(file name, source)`.
pub const ALL: [(&str, &str); 4] = [
    ("lstm_step.wgsl", LSTM_STEP),
    ("lstm_step_tiled.wgsl", LSTM_STEP_TILED),
    ("heads.wgsl", HEADS),
    ("relayout.wgsl", RELAYOUT),
];

/// Rewrites the value of each `const NAME: TYPE = VALUE;` line named in `values`.
///
/// # Errors
/// A name with no such line in `src` (the shader and the runtime disagree).
pub fn specialize(src: &str, values: &[(&str, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(src.len());
    let mut seen = vec![false; values.len()];
    for line in src.lines() {
        let mut replaced = false;
        for (i, (name, value)) in values.iter().enumerate() {
            let prefix = format!("const {name}:");
            if let Some(rest) = line.strip_prefix(&prefix)
                && let (Some(eq), Some(semi)) = (rest.find('='), rest.find(';'))
            {
                out.push_str(&prefix);
                out.push_str(&rest[..=eq]);
                out.push(' ');
                out.push_str(value);
                out.push_str(&rest[semi..]);
                out.push('\n');
                seen[i] = true;
                replaced = true;
                break;
            }
        }
        if !replaced {
            out.push_str(line);
            out.push('\n');
        }
    }
    match seen.iter().position(|s| !s) {
        Some(i) => Err(format!("shader has no `const {}` line", values[i].0)),
        None => Ok(out),
    }
}

/// The compile-time shape of the step and heads kernels for one model and adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Hidden size `H`.
    pub hidden: u32,
    /// Per-customer features.
    pub customer_features: u32,
    /// Invocations per workgroup.
    pub workgroup: u32,
    /// Whether each layer's weights are copied into workgroup memory.
    pub use_shared: bool,
    /// Vec4 slots of workgroup memory the step kernel declares (the largest layer's weights).
    pub shared_v4: u32,
    /// The gates' `tanh` and sigmoid from `exp` (else `step::fast_tanh`'s rational).
    pub act_exp: bool,
    /// Head outputs per customer.
    pub head_dim: u32,
}

impl Shape {
    /// `ceil(H / 4)`: vec4s per hidden vector.
    pub fn hv(&self) -> u32 {
        self.hidden.div_ceil(4)
    }

    /// `ceil(CF / 4)`: vec4s per layer-0 input.
    pub fn kv0(&self) -> u32 {
        self.customer_features.div_ceil(4)
    }

    /// `lstm_step.wgsl` for this shape.
    ///
    /// # Errors
    /// The shader lacks one of the constants (a bug).
    pub fn lstm_step(&self) -> Result<String, String> {
        specialize(
            LSTM_STEP,
            &[
                ("HIDDEN", format!("{}u", self.hidden)),
                ("HV", format!("{}u", self.hv())),
                ("CF", format!("{}u", self.customer_features)),
                ("KV0", format!("{}u", self.kv0())),
                ("WG", format!("{}u", self.workgroup)),
                ("USE_SHARED", self.use_shared.to_string()),
                ("SHARED_V4", format!("{}u", self.shared_v4.max(1))),
                ("ACT_EXP", self.act_exp.to_string()),
            ],
        )
    }

    /// `heads.wgsl` for this shape.
    ///
    /// # Errors
    /// The shader lacks one of the constants (a bug).
    pub fn heads(&self) -> Result<String, String> {
        specialize(
            HEADS,
            &[
                ("HIDDEN", format!("{}u", self.hidden)),
                ("HV", format!("{}u", self.hv())),
                ("CF", format!("{}u", self.customer_features)),
                ("HD", format!("{}u", self.head_dim.max(1))),
                ("WG", format!("{}u", self.workgroup)),
            ],
        )
    }

    /// `relayout.wgsl` for this shape.
    ///
    /// # Errors
    /// The shader lacks the constant (a bug).
    pub fn relayout(&self) -> Result<String, String> {
        specialize(RELAYOUT, &[("WG", format!("{}u", self.workgroup))])
    }
}

/// The compile-time shape of one `lstm_step_tiled.wgsl` pipeline: one model, one kind of layer
/// (the first, reading the customer features, or a later one, reading the `h` below; the top
/// one with the heads fused in, or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TiledShape {
    /// Hidden size `H`.
    pub hidden: u32,
    /// Per-customer features.
    pub customer_features: u32,
    /// Invocations per workgroup.
    pub workgroup: u32,
    /// The first layer (inputs: the customer features) or a later one (inputs: the `h` below).
    pub first: bool,
    /// Whether the layer's weights are copied into workgroup memory (else read from storage).
    pub use_shared: bool,
    /// The gates' `tanh` and sigmoid from `exp` (else `step::fast_tanh`'s rational).
    pub act_exp: bool,
    /// Load the next tile into registers while computing this one.
    pub prefetch: bool,
    /// The top layer with the heads fused in (needs [`TiledShape::can_fuse_heads`]).
    pub last: bool,
    /// Head outputs per customer (for `last`).
    pub head_dim: u32,
    /// With `last`: every output goes out through the tile's memory, contiguously (needs
    /// `head_dim < rows`).
    pub stage_out: bool,
}

impl TiledShape {
    /// The largest tile ([`TiledShape::tile`]); the state's row stride and the upload pieces are
    /// multiples of it.
    pub const MAX_TILE: u32 = 128;

    /// Customers per tile (the shader's `TC`): 64, or 128 for workgroups of 512 invocations or
    /// more (each invocation computes 2 units of 4 customers: 64 customers give 256 invocations
    /// work at H = 32).
    pub fn tile(&self) -> u32 {
        if self.workgroup >= 512 { 128 } else { 64 }
    }

    /// `H` rounded up to a multiple of 4: units and `h` rows as the kernel lays them out.
    pub fn hp(&self) -> u32 {
        self.hidden.div_ceil(4) * 4
    }

    /// The layer's input rows, a multiple of 4.
    pub fn kin(&self) -> u32 {
        if self.first {
            self.customer_features.div_ceil(4) * 4
        } else {
            self.hp()
        }
    }

    /// Rows of a tile and of the layer's weights: inputs, then `h`.
    pub fn rows(&self) -> u32 {
        self.kin() + self.hp()
    }

    /// Vec4s of the layer's weights (`rows x hp`).
    pub fn weight_v4(&self) -> u32 {
        self.rows() * self.hp()
    }

    /// Bytes of workgroup memory for the tile, the pick rows and the heads' weights and biases
    /// (`tile`, `ys` and `hws` in the shader; `ys` and `hws` are one vec4 each unless the heads
    /// are fused in).
    pub fn tile_bytes(&self) -> u64 {
        let heads = if self.last {
            let hd = u64::from(self.head_dim.max(1));
            16 * u64::from(self.tile()) + 16 * (hd * u64::from(self.hp() / 4) + hd.div_ceil(4))
        } else {
            32
        };
        u64::from(self.rows()) * u64::from(self.tile()) * 4 + heads
    }

    /// Whether this shape can take the heads in ([`TiledShape::last`]): every invocation has at
    /// most one register tile (2 units x 4 customers), and there are 4 row groups of the tile's
    /// quads for the pick.
    pub fn can_fuse_heads(&self) -> bool {
        let quads = self.tile() / 4;
        (self.hp() / 2) * quads <= self.workgroup && 4 * quads <= self.workgroup
    }

    /// Bytes of workgroup memory for the tile and the weights.
    pub fn shared_bytes(&self) -> u64 {
        self.tile_bytes() + 16 * u64::from(self.weight_v4())
    }

    /// Bytes of workgroup memory the shader declares: [`TiledShape::shared_bytes`] with the
    /// weights in workgroup memory, else the tile's and the one vec4 that `ws` still declares.
    pub fn workgroup_bytes(&self) -> u64 {
        if self.use_shared {
            self.shared_bytes()
        } else {
            self.tile_bytes() + 16
        }
    }

    /// `lstm_step_tiled.wgsl` for this shape.
    ///
    /// # Errors
    /// The shader lacks one of the constants (a bug).
    pub fn source(&self) -> Result<String, String> {
        specialize(
            LSTM_STEP_TILED,
            &[
                ("HIDDEN", format!("{}u", self.hidden)),
                ("HP", format!("{}u", self.hp())),
                ("CF", format!("{}u", self.customer_features)),
                ("KIN", format!("{}u", self.kin())),
                ("FIRST", self.first.to_string()),
                ("WG", format!("{}u", self.workgroup)),
                ("USE_SHARED", self.use_shared.to_string()),
                (
                    "WS_V4",
                    format!("{}u", if self.use_shared { self.weight_v4() } else { 1 }),
                ),
                ("TC", format!("{}u", self.tile())),
                ("ACT_EXP", self.act_exp.to_string()),
                ("PREFETCH", self.prefetch.to_string()),
                ("LAST", self.last.to_string()),
                ("HD", format!("{}u", self.head_dim.max(1))),
                ("STAGE_OUT", self.stage_out.to_string()),
            ],
        )
    }
}

/// `lstm_step.wgsl`'s and `lstm_step_tiled.wgsl`'s `Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct StepParams {
    /// End of the dispatch's customers in the chunk.
    pub n: u32,
    /// Stride between state rows.
    pub ld: u32,
    /// The layer.
    pub layer: u32,
    /// The layer's first vec4 in the weights buffer.
    pub w_off: u32,
    /// The layer's first float in the bias buffer.
    pub b_off: u32,
    /// The dispatch's first customer in the chunk (`n` is its end).
    pub start: u32,
    /// Padding to 32 bytes (a multiple of 16, as uniforms want).
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<StepParams>() == 32);

/// `heads.wgsl`'s `Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct HeadsParams {
    /// End of the dispatch's customers in the chunk.
    pub n: u32,
    /// Stride between state rows.
    pub ld: u32,
    /// First state row of the top layer's `h`.
    pub top_row: u32,
    /// Head outputs per customer.
    pub head_dim: u32,
    /// 0: every output; 1: the picked value, decoded.
    pub mode: u32,
    /// Pick mode: the horizon's first output.
    pub first: u32,
    /// Pick mode: 0 mean, 1 p50, 2 p90, 3 p99.
    pub quantile: u32,
    /// The dispatch's first customer in the chunk (`n` is its end).
    pub start: u32,
}
const _: () = assert!(std::mem::size_of::<HeadsParams>() == 32);

/// `relayout.wgsl`'s `Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RelayoutParams {
    /// Customers in the chunk.
    pub n: u32,
    /// Stride between state rows.
    pub ld: u32,
    /// State values per customer.
    pub rows: u32,
    /// 0: customer-major to feature-major; 1: back.
    pub dir: u32,
}
const _: () = assert!(std::mem::size_of::<RelayoutParams>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specialize_rewrites_and_complains() {
        let s = specialize(
            "const A: u32 = 1u;  // x\nfn f() {}\n",
            &[("A", "7u".into())],
        )
        .unwrap();
        assert_eq!(s, "const A: u32 = 7u;  // x\nfn f() {}\n");
        assert!(specialize("fn f() {}", &[("A", "7u".into())]).is_err());
    }
}
