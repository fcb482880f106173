//! Every shader parses and validates with naga: as written (the defaults) and specialized for
//! the shapes the runtime builds (hidden sizes not a multiple of 4, weights in workgroup memory
//! or not, other workgroup sizes and tiles, exp or rational activations, heads fused into the
//! tiled kernel or not), and the tiled kernel's declared workgroup memory is what the backend
//! counts. Needs no GPU.

use shadowbucket_gpu::shaders::{ALL, Shape, TiledShape};

fn validate(name: &str, src: &str) {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(src)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name} does not validate:\n{}", e.emit_to_string(src)));
}

/// Bytes of every `var<workgroup>` of a shader, as naga sizes them.
fn workgroup_bytes(src: &str) -> u64 {
    let module = naga::front::wgsl::parse_str(src).unwrap();
    module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
        .map(|(_, g)| u64::from(module.types[g.ty].inner.size(module.to_ctx())))
        .sum()
}

#[test]
fn shaders_as_written_validate() {
    for (name, src) in ALL {
        validate(name, src);
    }
}

#[test]
fn specialized_shaders_validate() {
    for hidden in [1u32, 5, 8, 32, 64, 1024] {
        for (i, (use_shared, workgroup)) in [(true, 256u32), (false, 64), (true, 1)]
            .into_iter()
            .enumerate()
        {
            let shape = Shape {
                hidden,
                customer_features: 7,
                workgroup,
                use_shared,
                shared_v4: if use_shared {
                    8 * hidden * hidden.div_ceil(4)
                } else {
                    1
                },
                act_exp: i % 2 == 0,
                head_dim: [20, 1, 7][i],
            };
            let tag = format!(
                "H={hidden} shared={use_shared} wg={workgroup} exp={} head_dim={}",
                shape.act_exp, shape.head_dim
            );
            validate(&format!("lstm_step {tag}"), &shape.lstm_step().unwrap());
            validate(&format!("heads {tag}"), &shape.heads().unwrap());
            validate(&format!("relayout {tag}"), &shape.relayout().unwrap());
        }
    }
}

#[test]
fn specialized_tiled_shaders_validate() {
    for hidden in [1u32, 5, 8, 32, 64, 1024] {
        for first in [true, false] {
            for (i, (use_shared, workgroup)) in
                [(true, 256u32), (false, 512), (true, 1), (false, 1024)]
                    .into_iter()
                    .enumerate()
            {
                for last in [false, true] {
                    let shape = TiledShape {
                        hidden,
                        customer_features: 7,
                        workgroup,
                        first,
                        use_shared,
                        act_exp: i % 2 == 0,
                        prefetch: i < 2,
                        last,
                        head_dim: [20, 4, 1, 8][i],
                        stage_out: last && i % 2 == 0,
                    };
                    let tag = format!(
                        "H={hidden} first={first} shared={use_shared} wg={workgroup} exp={} \
                         last={last} head_dim={} stage_out={}",
                        shape.act_exp, shape.head_dim, shape.stage_out
                    );
                    let src = shape.source().unwrap();
                    validate(&format!("lstm_step_tiled {tag}"), &src);
                    // the workgroup memory it declares is what the backend holds to the limit
                    assert_eq!(workgroup_bytes(&src), shape.workgroup_bytes(), "{tag}");
                }
            }
        }
    }
}

#[test]
fn a_broken_shader_fails_validation() {
    // The check above can fail: a type error is caught.
    let bad = "@compute @workgroup_size(1) fn main() { let a: u32 = 1.5; }";
    let parsed = naga::front::wgsl::parse_str(bad);
    let failed = match parsed {
        Err(_) => true,
        Ok(m) => naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&m)
        .is_err(),
    };
    assert!(failed);
}
