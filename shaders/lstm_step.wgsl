// lstm_step.wgsl: one LSTM layer's step for one chunk of customers, one invocation per customer
// (the simple kernel; lstm_step_tiled.wgsl is the default).
//
// The math is `shadowbucket::model::step::step_one` (see core/src/model/mod.rs), with the
// batched CPU step's choices: the feature normalization and the global features are folded into
// layer 0's weights and bias on the host; the gates use either the same rational `tanh` as
// `step::fast_tanh` (sigmoid(x) = 0.5 + 0.5 tanh(x/2)), so that GPU and CPU differ only by
// summation order, or (ACT_EXP, the default) sigmoid and tanh from `exp`, within a few 1e-7 of
// it.
//
// Bindings (group 0):
//   0  params   uniform              Params (below)
//   1  weights  storage, read        per layer, per unit j, per gate q (i, f, g, o): one row of
//                                    KV + HV vec4s, `[W_ih row (zero padded) | W_hh row (zero
//                                    padded)]`, rows ordered (j, q); layer l starts at vec4
//                                    `params.w_off`
//   2  bias     storage, read        per layer, `b_ih + b_hh` ordered (j, q) like the rows;
//                                    layer 0's includes this tick's global features
//   3  x        storage, read        this chunk's per-customer features, customer-major
//                                    `n x CF` (layer 0 reads it; the other layers ignore it)
//   4  state    storage, read_write  this chunk's recurrent state, feature-major: value `k` of
//                                    customer `c` at `k * ld + c`, `k` over `[h_0, c_0, h_1, ...]`
//
// Feature-major state makes every load and store of a warp/wavefront one contiguous run (32
// customers x 4 bytes per instruction) and lets an invocation write `h'_j` as soon as it has it,
// keeping only the old `h` in registers. The host turns it to and from the store's customer-major
// column (relayout.wgsl).
//
// The `const` lines below are the defaults the naga test validates; the runtime rewrites them for
// each model and adapter (`shaders::specialize`).

const HIDDEN: u32 = 32u;      // H
const HV: u32 = 8u;           // ceil(H / 4): vec4s per h
const CF: u32 = 7u;           // per-customer features
const KV0: u32 = 2u;          // ceil(CF / 4): vec4s per layer-0 input
const KVMAX: u32 = max(KV0, HV); // vec4s of a layer's input
const WG: u32 = 256u;         // invocations per workgroup
const USE_SHARED: bool = true; // weights copied to workgroup memory (false: read from storage)
const SHARED_V4: u32 = 2048u; // vec4 slots of workgroup memory (the largest layer; 1 if unused)
const ACT_EXP: bool = false;  // activations from `exp` (false: step::fast_tanh's rational)

struct Params {
    n: u32,       // end of this dispatch's customers (the chunk's, or an upload piece's)
    ld: u32,      // stride between state rows (>= the chunk's customers, a multiple of 64)
    layer: u32,   // this layer's index
    w_off: u32,   // this layer's first vec4 in `weights`
    b_off: u32,   // this layer's first float in `bias`
    start: u32,   // first customer of this dispatch
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weights: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> state: array<f32>;

var<workgroup> ws: array<vec4<f32>, SHARED_V4>;

// step::fast_tanh, term for term; with ACT_EXP, 1 - 2 / (exp(2v) + 1) instead (no clamp needed:
// exp overflowing to +inf gives 1, underflowing to 0 gives -1).
fn tanh_r(v: f32) -> f32 {
    if ACT_EXP {
        return 1.0 - 2.0 / (exp(2.0 * v) + 1.0);
    }
    let x = clamp(v, -7.905311, 7.905311);
    let x2 = x * x;
    var a = fma(x2, -2.7607685e-16, 2.000188e-13);
    a = fma(a, x2, -8.604672e-11);
    a = fma(a, x2, 5.122297e-8);
    a = fma(a, x2, 1.4857224e-5);
    a = fma(a, x2, 6.3726193e-4);
    a = fma(a, x2, 4.8935246e-3);
    a = a * x;
    var b = fma(x2, 1.1982584e-6, 1.185347e-4);
    b = fma(b, x2, 2.2684346e-3);
    b = fma(b, x2, 4.893525e-3);
    return a / b;
}

fn sigmoid_r(v: f32) -> f32 {
    if ACT_EXP {
        return 1.0 / (1.0 + exp(-v));
    }
    return fma(0.5, tanh_r(0.5 * v), 0.5);
}

fn w(i: u32) -> vec4<f32> {
    if USE_SHARED {
        return ws[i];
    }
    return weights[p.w_off + i];
}

// Four state values `row0 .. row0 + 3` of customer `c`, zero past `limit`.
fn load4(row0: u32, limit: u32, c: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        if row0 + e < limit {
            v[e] = state[(row0 + e) * p.ld + c];
        }
    }
    return v;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let kv = select(HV, KV0, p.layer == 0u);
    let rv = kv + HV;
    if USE_SHARED {
        let total = 4u * HIDDEN * rv;
        for (var i = lid; i < total; i += WG) {
            ws[i] = weights[p.w_off + i];
        }
        workgroupBarrier();
    }
    let c = p.start + gid.x;
    if c >= p.n {
        return;
    }
    let hrow = 2u * p.layer * HIDDEN;
    var xin: array<vec4<f32>, KVMAX>;
    if p.layer == 0u {
        for (var v = 0u; v < KV0; v++) {
            var t = vec4<f32>(0.0);
            for (var e = 0u; e < 4u; e++) {
                let k = 4u * v + e;
                if k < CF {
                    t[e] = x[c * CF + k];
                }
            }
            xin[v] = t;
        }
    } else {
        let below = hrow - 2u * HIDDEN;
        for (var v = 0u; v < HV; v++) {
            xin[v] = load4(below + 4u * v, below + HIDDEN, c);
        }
    }
    var h: array<vec4<f32>, HV>;
    for (var v = 0u; v < HV; v++) {
        h[v] = load4(hrow + 4u * v, hrow + HIDDEN, c);
    }
    for (var j = 0u; j < HIDDEN; j++) {
        var z = vec4<f32>(0.0);
        for (var q = 0u; q < 4u; q++) {
            let row = (4u * j + q) * rv;
            var acc = vec4<f32>(0.0);
            if p.layer == 0u {
                for (var v = 0u; v < KV0; v++) {
                    acc = fma(w(row + v), xin[v], acc);
                }
            } else {
                for (var v = 0u; v < HV; v++) {
                    acc = fma(w(row + v), xin[v], acc);
                }
            }
            for (var v = 0u; v < HV; v++) {
                acc = fma(w(row + kv + v), h[v], acc);
            }
            z[q] = bias[p.b_off + 4u * j + q] + ((acc.x + acc.y) + (acc.z + acc.w));
        }
        let ig = sigmoid_r(z.x);
        let fg = sigmoid_r(z.y);
        let gg = tanh_r(z.z);
        let og = sigmoid_r(z.w);
        let ci = (hrow + HIDDEN + j) * p.ld + c;
        let cn = fg * state[ci] + ig * gg;
        state[ci] = cn;
        state[(hrow + j) * p.ld + c] = og * tanh_r(cn);
    }
}
