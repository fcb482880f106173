// relayout.wgsl: converts one chunk's recurrent state between the store's customer-major column
// (`rows` values per customer, contiguous) and the device's feature-major copy (value `k` of
// customer `c` at `k * ld + c`, see lstm_step.wgsl). One invocation per customer; it runs when the
// durable copy goes up (after `invalidate`) or comes back (`sync_state`), never in a plain tick.
//
// Bindings (group 0):
//   0  params   uniform              Params (below)
//   1  state    storage, read_write  the feature-major device copy
//   2  rows     storage, read_write  the customer-major staging copy, `n x rows`

const WG: u32 = 256u;  // invocations per workgroup

struct Params {
    n: u32,     // customers in this chunk
    ld: u32,    // stride between state rows
    rows: u32,  // state values per customer
    dir: u32,   // 0: customer-major -> feature-major (upload); 1: back (download)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> state: array<f32>;
@group(0) @binding(2) var<storage, read_write> rows: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= p.n {
        return;
    }
    for (var k = 0u; k < p.rows; k++) {
        if p.dir == 0u {
            state[k * p.ld + c] = rows[c * p.rows + k];
        } else {
            rows[c * p.rows + k] = state[k * p.ld + c];
        }
    }
}
