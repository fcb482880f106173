// lstm_step_tiled.wgsl: one LSTM layer's step for one chunk of customers, register-tiled.
//
// The math is lstm_step.wgsl's (`shadowbucket::model::step::step_one` with the batched CPU step's
// choices: normalization and global features folded into layer 0's weights and bias on the host;
// the activations from `exp` with ACT_EXP, else the CPU's rational `tanh` with
// sigmoid(x) = 0.5 + 0.5 tanh(x/2)); the summation order differs (here: bias first, then the
// inputs in order, then the old `h`, as step_one; with fused multiply-adds).
//
// Work split. A workgroup owns a tile of TC customers (64, or 128 with 512 invocations) at a
// time. Workgroups are persistent: the host dispatches a bounded number of them
// (`GpuOptions::tiled_groups`, at most the tiles), each copies the layer's weights to workgroup
// memory once and then takes tiles `w, w + G, w + 2G, ...` (w its index, G the workgroups): every
// tile costs the same, so a static split balances as well as a shared counter would, and each
// workgroup knows its next tile in advance. Per tile:
//   1. store the tile into workgroup memory from registers: the layer's input rows then the
//      layer's own `h` rows, feature-major, `tile[k][c]` as vec4s of 4 customers. With PREFETCH
//      each invocation loaded its share of the tile (coalesced loads from x and from the state)
//      while the previous tile was computed, so the loads' latency hides behind the products;
//   2. barrier; with PREFETCH, start loading the next tile's share into registers; then each
//      invocation computes a register tile of 2 units x 4 gates x 4 customers
//      (8 vec4 accumulators): per input row k one vec4 of 4 customers' inputs from the tile and
//      one vec4 of weights per unit (the four gates of unit j at input k are one vec4,
//      `w[k][j]`), 32 FMAs for 3 workgroup-memory loads. Consecutive invocations take
//      consecutive customer quads of the same unit pair (weight reads broadcast, tile reads
//      contiguous);
//   3. the invocation then holds every gate of its units for its customers: with the old `c`
//      (loaded before the products), it writes `c'` and `h'` straight to the feature-major
//      state (one vec4 store per row, consecutive invocations contiguous). The tile already
//      holds the old `h`, which was read before the barrier, so overwriting it is safe; a
//      barrier ends each tile before the next tile's stores into workgroup memory.
// Customers past `n` in the last tile compute on zero inputs and store only inside the row
// stride (`ld`, a multiple of TC), never past the buffer; quads wholly past `n` store nothing.
//
// Bindings (group 0; lstm_step.wgsl's layout, with different element types):
//   0  params   uniform              Params (below)
//   1  weights  storage, read        per layer, KT x HP vec4s: row k (the layer's KIN input rows,
//                                    zero padded, then its HP `h` rows, zero padded), unit j:
//                                    the gates (i, f, g, o) of unit j on input k; the layer
//                                    starts at vec4 `params.w_off`
//   2  bias     storage, read        per layer, `b_ih + b_hh` per unit as one vec4 of gates
//                                    (i, f, g, o); the layer starts at float `params.b_off`;
//                                    layer 0's includes this tick's global features
//   3  x        storage, read        this chunk's per-customer features, customer-major `n x CF`
//                                    (the first layer; and LAST above the first layer, pick
//                                    mode: each customer's usage feature `x[c * CF]`)
//   4  state    storage, read_write  this chunk's recurrent state, feature-major (value `k` of
//                                    customer `c` at float `k * ld + c`), read as vec4s
//   5  head_w   storage, read        heads.wgsl's (LAST only): HD rows of HP / 4 vec4s
//   6  head_b   storage, read        heads.wgsl's: HD floats
//   7  scale    storage, read        heads.wgsl's: per customer, the scale (pick mode)
//   8  out      storage, read_write  heads.wgsl's: `n x HD` customer-major, or `n` picks
//   9  hp       uniform              heads.wgsl's Params (mode, first, quantile)
//
// LAST: the top layer with the heads fused in (heads.wgsl's math, see there). Each invocation
// computes its cells straight after its products, as the other layers do (so one warp's gate
// math overlaps another's products), and keeps its new `h` in registers; once every read of the
// tile's old `h` is over (a barrier) the new `h` goes into the tile's `h` rows, and after
// another barrier the workgroup computes the tile's head outputs from workgroup memory, with
// the heads' weights and biases copied there once per workgroup (`hws`): invocation (row group
// g, quad q) takes rows g, g + WG / CG, ... of the quad's 4 customers (full mode), or, in pick
// mode, the picked horizon's row g < 4, handed to the quad's decoding invocation through `ys`;
// that invocation loaded its customers' scales (and, above the first layer, usage features)
// before its products, and the first layer's usage features are the tile's row 0. With
// STAGE_OUT the full outputs go out through the tile's memory as one contiguous run per tile.
// The host fuses only where every invocation has at most one register tile (UG * CG <= WG);
// otherwise it runs heads.wgsl after the layers.
//
// One pipeline per kind of layer (FIRST: the first layer, inputs from x; otherwise inputs from
// the layer below's `h`; LAST: the top one with the heads), so every loop has a constant trip
// count. The `const` lines below are the defaults the naga test validates; the runtime rewrites
// them (`shaders::TiledShape`).

const HIDDEN: u32 = 32u;       // H
const HP: u32 = 32u;           // H rounded up to a multiple of 4: units and `h` rows as laid out
const CF: u32 = 7u;            // per-customer features
const KIN: u32 = 8u;           // this layer's input rows, a multiple of 4 (first: CF rounded up)
const FIRST: bool = true;      // the first layer (inputs from x) or a later one (the h below)
const WG: u32 = 256u;          // invocations per workgroup
const USE_SHARED: bool = true; // weights in workgroup memory (false: read from storage)
const WS_V4: u32 = 1280u;      // vec4 slots of workgroup memory for the weights (KT * HP, or 1)
const TC: u32 = 64u;           // customers per tile, a multiple of 4 (divides `ld`)
const ACT_EXP: bool = false;   // activations from `exp` (false: step::fast_tanh's rational)
const PREFETCH: bool = true;   // load the next tile into registers during the products
const LAST: bool = false;      // the top layer, the heads fused in (needs UG * CG <= WG)
const HD: u32 = 20u;           // head outputs per customer (LAST)
const STAGE_OUT: bool = false; // LAST, full mode: outputs through the tile's memory (HD < KT)
const RG: u32 = max(WG / CG, 1u); // LAST: row groups of the tile's quads
const NR: u32 = (HD + RG - 1u) / RG; // LAST, full mode: head rows per invocation
const SO: u32 = HD + 1u;       // STAGE_OUT: staged floats per customer (padded: fewer conflicts)
const KT: u32 = KIN + HP;      // tile rows
const CG: u32 = TC / 4u;       // customer quads per tile
const UG: u32 = HP / 2u;       // unit pairs
const NV: u32 = (KT * CG + WG - 1u) / WG; // the tile's vec4s per invocation
const NX: u32 = (TC * CF + WG - 1u) / WG; // the tile's features per invocation (first layer)

struct Params {
    n: u32,       // end of this dispatch's customers (the chunk's, or an upload piece's)
    ld: u32,      // stride between state rows (>= the chunk's customers, a multiple of TC)
    layer: u32,   // this layer's index
    w_off: u32,   // this layer's first vec4 in `weights`
    b_off: u32,   // this layer's first float in `bias` (a multiple of 4)
    start: u32,   // first customer of this dispatch (a multiple of TC)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weights: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> state: array<vec4<f32>>;

struct HeadsParams {
    n: u32,         // (heads.wgsl's; unused here)
    ld: u32,        // (unused)
    top_row: u32,   // (unused)
    head_dim: u32,  // (unused: HD)
    mode: u32,      // 0: every output; 1: the picked value, decoded
    first: u32,     // pick mode: the horizon's first output (4 * horizon)
    quantile: u32,  // pick mode: 0 mean, 1 p50, 2 p90, 3 p99
    start: u32,     // (unused)
}

@group(0) @binding(5) var<storage, read> head_w: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> head_b: array<f32>;
@group(0) @binding(7) var<storage, read> scale: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
@group(0) @binding(9) var<uniform> hp: HeadsParams;

var<workgroup> ws: array<vec4<f32>, WS_V4>;
var<workgroup> tile: array<vec4<f32>, KT * CG>;
// LAST, pick mode: the picked horizon's 4 outputs per quad, row-major (`ys[g * CG + q]`)
var<workgroup> ys: array<vec4<f32>, select(1u, 4u * CG, LAST)>;
// LAST: the heads' weights (HD rows of HP / 4 vec4s, as head_w) then their biases (HD floats
// as vec4s), copied once per workgroup like `ws`
const HWV: u32 = HD * (HP / 4u);
var<workgroup> hws: array<vec4<f32>, select(1u, HWV + (HD + 3u) / 4u, LAST)>;

// this invocation's share of a tile, between its loads and its store into `tile`: vec4 `m` is
// tile element `lid + m * WG`, feature `m` is element `lid + m * WG` of the tile's `TC x CF`
var<private> fetched: array<vec4<f32>, NV>;
var<private> fetched_x: array<f32, NX>;

// step::fast_tanh, term for term, on four values; with ACT_EXP, 1 - 2 / (exp(2v) + 1) instead
// (no clamp needed: exp overflowing to +inf gives 1, underflowing to 0 gives -1).
fn tanh4(v: vec4<f32>) -> vec4<f32> {
    if ACT_EXP {
        return 1.0 - 2.0 / (exp(2.0 * v) + 1.0);
    }
    let x = clamp(v, vec4<f32>(-7.905311), vec4<f32>(7.905311));
    let x2 = x * x;
    var a = fma(x2, vec4<f32>(-2.7607685e-16), vec4<f32>(2.000188e-13));
    a = fma(a, x2, vec4<f32>(-8.604672e-11));
    a = fma(a, x2, vec4<f32>(5.122297e-8));
    a = fma(a, x2, vec4<f32>(1.4857224e-5));
    a = fma(a, x2, vec4<f32>(6.3726193e-4));
    a = fma(a, x2, vec4<f32>(4.8935246e-3));
    a = a * x;
    var b = fma(x2, vec4<f32>(1.1982584e-6), vec4<f32>(1.185347e-4));
    b = fma(b, x2, vec4<f32>(2.2684346e-3));
    b = fma(b, x2, vec4<f32>(4.893525e-3));
    return a / b;
}

fn sigmoid4(v: vec4<f32>) -> vec4<f32> {
    if ACT_EXP {
        return 1.0 / (1.0 + exp(-v));
    }
    return fma(vec4<f32>(0.5), tanh4(0.5 * v), vec4<f32>(0.5));
}

fn wv(i: u32) -> vec4<f32> {
    if USE_SHARED {
        return ws[i];
    }
    return weights[p.w_off + i];
}

fn bias_of(j: u32) -> vec4<f32> {
    if j < HIDDEN {
        return bias[p.b_off / 4u + j];
    }
    return vec4<f32>(0.0);
}

// Unit `j`'s old `c` for the customer quad at vec4 column `col` (zero for a padding unit).
fn old_c(j: u32, col: u32) -> vec4<f32> {
    if j < HIDDEN {
        return state[((2u * p.layer + 1u) * HIDDEN + j) * (p.ld / 4u) + col];
    }
    return vec4<f32>(0.0);
}

// Unit `j`'s new `c` and `h` for the customer quad at vec4 column `col`, from its gates
// `z0 .. z3` (one vec4 (i, f, g, o) per customer) and its old `c`; returns the new `h`.
fn cell(j: u32, col: u32, z0: vec4<f32>, z1: vec4<f32>, z2: vec4<f32>, z3: vec4<f32>,
        c_old: vec4<f32>) -> vec4<f32> {
    let ld4 = p.ld / 4u;
    let hrow = 2u * p.layer * HIDDEN + j;
    let ig = sigmoid4(vec4<f32>(z0.x, z1.x, z2.x, z3.x));
    let fg = sigmoid4(vec4<f32>(z0.y, z1.y, z2.y, z3.y));
    let gg = tanh4(vec4<f32>(z0.z, z1.z, z2.z, z3.z));
    let og = sigmoid4(vec4<f32>(z0.w, z1.w, z2.w, z3.w));
    let cn = fg * c_old + ig * gg;
    let hn = og * tanh4(cn);
    state[(hrow + HIDDEN) * ld4 + col] = cn;
    state[hrow * ld4 + col] = hn;
    return hn;
}

// Loads this invocation's share of the tile starting at customer `t0` into `fetched`: rows
// [inputs (KIN) | own h (HP)], each TC customers as CG vec4s (the first layer's input rows come
// from x into `fetched_x`).
fn fetch(t0: u32, lid: u32) {
    let ld4 = p.ld / 4u;
    let col0 = t0 / 4u;
    let hrow = 2u * p.layer * HIDDEN;
    for (var m = 0u; m < NV; m++) {
        let i = lid + m * WG;
        let r = i / CG;
        let q = i % CG;
        var v = vec4<f32>(0.0);
        if i < KT * CG {
            if r < KIN {
                if !FIRST && r < HIDDEN {
                    v = state[(hrow - 2u * HIDDEN + r) * ld4 + col0 + q];
                }
            } else if r - KIN < HIDDEN {
                v = state[(hrow + r - KIN) * ld4 + col0 + q];
            }
        }
        fetched[m] = v;
    }
    if FIRST {
        // x is customer-major: the tile's TC x CF values are contiguous.
        for (var m = 0u; m < NX; m++) {
            let i = lid + m * WG;
            var v = 0.0;
            if i < TC * CF && t0 + i / CF < p.n {
                v = x[t0 * CF + i];
            }
            fetched_x[m] = v;
        }
    }
}

// Stores this invocation's `fetched` share into `tile`.
fn store_tile(lid: u32) {
    for (var m = 0u; m < NV; m++) {
        let i = lid + m * WG;
        // the first layer's feature rows come from fetched_x, below
        if i < KT * CG && !(FIRST && i / CG < CF) {
            tile[i] = fetched[m];
        }
    }
    if FIRST {
        for (var m = 0u; m < NX; m++) {
            let i = lid + m * WG;
            if i < TC * CF {
                let c = i / CF;
                tile[(i % CF) * CG + c / 4u][c % 4u] = fetched_x[m];
            }
        }
    }
}

// A register tile: the gates of unit pair `ug` for customer quad `cg` (`a<u><e>`: unit 2ug + u,
// customer e of the quad), and the two units' old `c`.
struct Acc {
    a00: vec4<f32>,
    a01: vec4<f32>,
    a02: vec4<f32>,
    a03: vec4<f32>,
    a10: vec4<f32>,
    a11: vec4<f32>,
    a12: vec4<f32>,
    a13: vec4<f32>,
    c0: vec4<f32>,
    c1: vec4<f32>,
}

// The products of unit pair `ug` and customer quad `cg` of the tile starting at `t0`.
fn products(ug: u32, cg: u32, t0: u32) -> Acc {
    let j0 = 2u * ug;
    let j1 = j0 + 1u;
    let col = t0 / 4u + cg;
    // the old c, in flight during the products (past the chunk: inside the row stride)
    let c0 = old_c(j0, col);
    let c1 = old_c(j1, col);
    let b0 = bias_of(j0);
    let b1 = bias_of(j1);
    // a<u><e>: gates of unit j<u> for customer e of the quad
    var a00 = b0;
    var a01 = b0;
    var a02 = b0;
    var a03 = b0;
    var a10 = b1;
    var a11 = b1;
    var a12 = b1;
    var a13 = b1;
    for (var k = 0u; k < KT; k += 4u) {
        // four rows per trip, written out (KT is a multiple of 4)
        var xv = tile[k * CG + cg];
        var w0 = wv(k * HP + j0);
        var w1 = wv(k * HP + j1);
        a00 = fma(w0, vec4<f32>(xv.x), a00);
        a01 = fma(w0, vec4<f32>(xv.y), a01);
        a02 = fma(w0, vec4<f32>(xv.z), a02);
        a03 = fma(w0, vec4<f32>(xv.w), a03);
        a10 = fma(w1, vec4<f32>(xv.x), a10);
        a11 = fma(w1, vec4<f32>(xv.y), a11);
        a12 = fma(w1, vec4<f32>(xv.z), a12);
        a13 = fma(w1, vec4<f32>(xv.w), a13);
        xv = tile[(k + 1u) * CG + cg];
        w0 = wv((k + 1u) * HP + j0);
        w1 = wv((k + 1u) * HP + j1);
        a00 = fma(w0, vec4<f32>(xv.x), a00);
        a01 = fma(w0, vec4<f32>(xv.y), a01);
        a02 = fma(w0, vec4<f32>(xv.z), a02);
        a03 = fma(w0, vec4<f32>(xv.w), a03);
        a10 = fma(w1, vec4<f32>(xv.x), a10);
        a11 = fma(w1, vec4<f32>(xv.y), a11);
        a12 = fma(w1, vec4<f32>(xv.z), a12);
        a13 = fma(w1, vec4<f32>(xv.w), a13);
        xv = tile[(k + 2u) * CG + cg];
        w0 = wv((k + 2u) * HP + j0);
        w1 = wv((k + 2u) * HP + j1);
        a00 = fma(w0, vec4<f32>(xv.x), a00);
        a01 = fma(w0, vec4<f32>(xv.y), a01);
        a02 = fma(w0, vec4<f32>(xv.z), a02);
        a03 = fma(w0, vec4<f32>(xv.w), a03);
        a10 = fma(w1, vec4<f32>(xv.x), a10);
        a11 = fma(w1, vec4<f32>(xv.y), a11);
        a12 = fma(w1, vec4<f32>(xv.z), a12);
        a13 = fma(w1, vec4<f32>(xv.w), a13);
        xv = tile[(k + 3u) * CG + cg];
        w0 = wv((k + 3u) * HP + j0);
        w1 = wv((k + 3u) * HP + j1);
        a00 = fma(w0, vec4<f32>(xv.x), a00);
        a01 = fma(w0, vec4<f32>(xv.y), a01);
        a02 = fma(w0, vec4<f32>(xv.z), a02);
        a03 = fma(w0, vec4<f32>(xv.w), a03);
        a10 = fma(w1, vec4<f32>(xv.x), a10);
        a11 = fma(w1, vec4<f32>(xv.y), a11);
        a12 = fma(w1, vec4<f32>(xv.z), a12);
        a13 = fma(w1, vec4<f32>(xv.w), a13);
    }
    return Acc(a00, a01, a02, a03, a10, a11, a12, a13, c0, c1);
}

// The cells of unit pair `ug` and customer quad `cg` from their products; returns the two
// units' new `h` (zero for a padding unit or a quad wholly past the dispatch's customers).
struct NewH {
    h0: vec4<f32>,
    h1: vec4<f32>,
}

fn finish(ug: u32, cg: u32, t0: u32, a: Acc) -> NewH {
    var r: NewH;
    if t0 + 4u * cg >= p.n {
        return r; // the whole quad is past the dispatch's customers
    }
    let j0 = 2u * ug;
    let j1 = j0 + 1u;
    let col = t0 / 4u + cg;
    if j0 < HIDDEN {
        r.h0 = cell(j0, col, a.a00, a.a01, a.a02, a.a03, a.c0);
    }
    if j1 < HIDDEN {
        r.h1 = cell(j1, col, a.a10, a.a11, a.a12, a.a13, a.c1);
    }
    return r;
}

// Head output `r` for the 4 customers of quad `q`, from the new `h` in the tile and the heads'
// weights and biases in `hws`.
fn head4(r: u32, q: u32) -> vec4<f32> {
    var acc = vec4<f32>(hws[HWV + r / 4u][r % 4u]);
    for (var v = 0u; v < HP / 4u; v++) {
        let w = hws[r * (HP / 4u) + v];
        let k = KIN + 4u * v;
        acc = fma(vec4<f32>(w.x), tile[k * CG + q], acc);
        acc = fma(vec4<f32>(w.y), tile[(k + 1u) * CG + q], acc);
        acc = fma(vec4<f32>(w.z), tile[(k + 2u) * CG + q], acc);
        acc = fma(vec4<f32>(w.w), tile[(k + 3u) * CG + q], acc);
    }
    return acc;
}

// softplus and expm1_pos: shaders/decode.wgsl, appended to this file when it is loaded.

// heads.wgsl's pick decode of one customer from its horizon's outputs y (mean, p50, and the two
// softplus increments), its usage feature `xu` and its scale `sc`.
fn decode(xu: f32, sc: f32, y: vec4<f32>) -> f32 {
    if hp.quantile == 0u {
        return sc * expm1_pos(max(xu + y.x, 0.0));
    }
    var z = xu + y.y;
    if hp.quantile >= 2u {
        z += softplus(y.z);
    }
    if hp.quantile >= 3u {
        z += softplus(y.w);
    }
    return sc * expm1_pos(max(z, 0.0));
}

// LAST, pick mode: what the decode reads from storage for the 4 customers of quad `q` (their
// scales and, above the first layer, their usage features), loaded by the decoding invocation
// before its products so that the loads' latency hides behind the products and cells. The first
// layer's usage features are the tile's row 0 (the raw x; normalization is in the weights).
struct PickIn {
    scale: vec4<f32>,
    xu: vec4<f32>,
}

fn pick_inputs(t0: u32, q: u32) -> PickIn {
    var r: PickIn;
    let c = t0 + 4u * q;
    for (var e = 0u; e < 4u; e++) {
        if c + e < p.n {
            r.scale[e] = scale[c + e];
            if !FIRST {
                r.xu[e] = x[(c + e) * CF];
            }
        }
    }
    return r;
}

// The tile's heads (LAST), from the new `h` in the tile; called in uniform control flow.
fn heads(t0: u32, lid: u32, pin: PickIn) {
    let q = lid % CG;
    let g = lid / CG;
    let c = t0 + 4u * q;
    if hp.mode == 0u && STAGE_OUT {
        // every output into registers, then (once every read of the tile's h is over) into the
        // tile's memory customer-major, then out as one contiguous run: consecutive invocations
        // write consecutive floats instead of each its customers' rows
        var y: array<vec4<f32>, NR>;
        for (var i = 0u; i < NR; i++) {
            let r = g + i * RG;
            if r < HD {
                y[i] = head4(r, q);
            }
        }
        workgroupBarrier();
        for (var i = 0u; i < NR; i++) {
            let r = g + i * RG;
            if r < HD {
                for (var e = 0u; e < 4u; e++) {
                    let f = (4u * q + e) * SO + r;
                    tile[f / 4u][f % 4u] = y[i][e];
                }
            }
        }
        workgroupBarrier();
        let count = min(TC, p.n - t0) * HD;
        for (var o = lid; o < count; o += WG) {
            let f = (o / HD) * SO + o % HD;
            out[t0 * HD + o] = tile[f / 4u][f % 4u];
        }
        return;
    }
    if hp.mode == 0u {
        if c < p.n {
            for (var r = g; r < HD; r += RG) {
                let y = head4(r, q);
                for (var e = 0u; e < 4u; e++) {
                    if c + e < p.n {
                        out[(c + e) * HD + r] = y[e];
                    }
                }
            }
        }
        return;
    }
    if g < 4u {
        ys[g * CG + q] = head4(hp.first + g, q);
    }
    workgroupBarrier();
    if g == 0u && c < p.n {
        let y0 = ys[q];
        let y1 = ys[CG + q];
        let y2 = ys[2u * CG + q];
        let y3 = ys[3u * CG + q];
        var xu = pin.xu;
        if FIRST {
            xu = tile[q];
        }
        for (var e = 0u; e < 4u; e++) {
            if c + e < p.n {
                out[c + e] = decode(xu[e], pin.scale[e], vec4<f32>(y0[e], y1[e], y2[e], y3[e]));
            }
        }
    }
}


@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    if USE_SHARED {
        // ordered before the first tile's reads by the barrier after its store
        for (var i = lid; i < KT * HP; i += WG) {
            ws[i] = weights[p.w_off + i];
        }
    }
    if LAST {
        // ordered before the first heads by the barriers of the first tile
        for (var i = lid; i < HWV; i += WG) {
            hws[i] = head_w[i];
        }
        // the biases as whole vec4s: one invocation writes each
        for (var i = lid; i < (HD + 3u) / 4u; i += WG) {
            var b = vec4<f32>(0.0);
            for (var e = 0u; e < 4u; e++) {
                if 4u * i + e < HD {
                    b[e] = head_b[4u * i + e];
                }
            }
            hws[HWV + i] = b;
        }
    }
    let tiles = (p.n - p.start + TC - 1u) / TC;
    // uniform across the workgroup: every barrier below is in uniform control flow
    var t = wid.x;
    if PREFETCH && t < tiles {
        fetch(p.start + t * TC, lid);
    }
    loop {
        if t >= tiles {
            break;
        }
        let t0 = p.start + t * TC;
        if !PREFETCH {
            fetch(t0, lid);
        }
        store_tile(lid);
        workgroupBarrier();
        let next = t + groups.x;
        if PREFETCH && next < tiles {
            // in flight during the products
            fetch(p.start + next * TC, lid);
        }
        if LAST {
            // one register tile per invocation (the host fuses only then); each computes its
            // cells straight after its products, so the warps' gate math overlaps other warps'
            // products, and keeps its new h in registers until every read of the old h is over
            let mine = lid < UG * CG;
            let ug = lid / CG;
            let cg = lid % CG;
            // the decoding invocations (row group 0 of heads) start the pick's loads
            var pin: PickIn;
            if hp.mode == 1u && lid < CG {
                pin = pick_inputs(t0, lid);
            }
            var h: NewH;
            if mine {
                h = finish(ug, cg, t0, products(ug, cg, t0));
            }
            workgroupBarrier();
            if mine {
                tile[(KIN + 2u * ug) * CG + cg] = h.h0;
                tile[(KIN + 2u * ug + 1u) * CG + cg] = h.h1;
            }
            workgroupBarrier();
            heads(t0, lid, pin);
        } else {
            for (var pr = lid; pr < UG * CG; pr += WG) {
                _ = finish(pr / CG, pr % CG, t0, products(pr / CG, pr % CG, t0));
            }
        }
        // every read of this tile before the next tile's stores
        workgroupBarrier();
        t = next;
    }
}
