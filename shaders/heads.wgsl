// heads.wgsl: the output heads for one chunk of customers, one invocation per customer; either
// every head output, or only the one decoded value the reservation reads.
//
// `y = W_head · h'_top + b_head` on the top layer's new `h` (core/src/model/mod.rs). In pick mode
// the invocation computes only the picked horizon's four outputs and decodes them as
// `shadowbucket::model::step::decode` does (the residual head, from the customer's raw usage
// feature x_u = x[c * CF], feature 0): z_mean = x_u + y0, z50 = x_u + y1,
// z90 = z50 + softplus(y2), z99 = z90 + softplus(y3), each decoded as s·expm1(max(z, 0)).
//
// Bindings (group 0):
//   0  params   uniform              Params (below)
//   1  head_w   storage, read        `head_dim` rows of HV vec4s (`head.weight`, rows zero padded)
//   2  head_b   storage, read        `head_dim` floats
//   3  state    storage, read        this chunk's state, feature-major (see lstm_step.wgsl)
//   4  scale    storage, read        per customer: the scale `s` (pick mode only)
//   5  out      storage, read_write  full mode: `n x head_dim`, customer-major (the layout of
//                                    `StepBackend::step`'s `out`); pick mode: `n` values
//   6  x        storage, read        this chunk's raw per-customer features, `n x CF`,
//                                    customer-major (lstm_step.wgsl's `x`; pick mode only)
//
// The `const` lines are defaults for the naga test; the runtime rewrites them per model.

const HIDDEN: u32 = 32u;  // H
const HV: u32 = 8u;       // ceil(H / 4)
const CF: u32 = 7u;       // per-customer features (x_u is the first)
const HD: u32 = 20u;      // head outputs per customer (`head_dim`)
const WG: u32 = 256u;     // invocations per workgroup

struct Params {
    n: u32,         // end of this dispatch's customers (the chunk's, or an upload piece's)
    ld: u32,        // stride between state rows
    top_row: u32,   // first state row of the top layer's h
    head_dim: u32,  // outputs per customer (HD)
    mode: u32,      // 0: every output; 1: the picked value, decoded
    first: u32,     // pick mode: the horizon's first output (4 * horizon)
    quantile: u32,  // pick mode: 0 mean, 1 p50, 2 p90, 3 p99
    start: u32,     // first customer of this dispatch (`n`: its end)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> head_w: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> head_b: array<f32>;
@group(0) @binding(3) var<storage, read> state: array<f32>;
@group(0) @binding(4) var<storage, read> scale: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> x: array<f32>;

// softplus and expm1_pos: shaders/decode.wgsl, appended to this file when it is loaded.

fn head(r: u32, h: ptr<function, array<vec4<f32>, HV>>) -> f32 {
    var acc = vec4<f32>(0.0);
    for (var v = 0u; v < HV; v++) {
        acc = fma(head_w[r * HV + v], (*h)[v], acc);
    }
    return head_b[r] + ((acc.x + acc.y) + (acc.z + acc.w));
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = p.start + gid.x;
    if c >= p.n {
        return;
    }
    var h: array<vec4<f32>, HV>;
    for (var v = 0u; v < HV; v++) {
        var t = vec4<f32>(0.0);
        for (var e = 0u; e < 4u; e++) {
            let k = 4u * v + e;
            if k < HIDDEN {
                t[e] = state[(p.top_row + k) * p.ld + c];
            }
        }
        h[v] = t;
    }
    if p.mode == 0u {
        for (var r = 0u; r < HD; r++) {
            out[c * HD + r] = head(r, &h);
        }
        return;
    }
    let s = scale[c];
    let xu = x[c * CF];
    if p.quantile == 0u {
        out[c] = s * expm1_pos(max(xu + head(p.first, &h), 0.0));
        return;
    }
    var z = xu + head(p.first + 1u, &h);
    if p.quantile >= 2u {
        z += softplus(head(p.first + 2u, &h));
    }
    if p.quantile >= 3u {
        z += softplus(head(p.first + 3u, &h));
    }
    out[c] = s * expm1_pos(max(z, 0.0));
}
