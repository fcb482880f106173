// decode.wgsl: the decode helpers the head kernels share (heads.wgsl and the tiled step's fused
// heads), appended to each of them when it is loaded (`gpu/src/shaders.rs`), so the residual
// head's decode has one definition on the GPU. The CPU reference is `model::step::decode`.

fn softplus(v: f32) -> f32 {
    if v > 20.0 {
        return v;
    }
    if v < -15.0 {
        return exp(v); // log1p(e) = e to f32 precision
    }
    return log(1.0 + exp(v));
}

// expm1 for z >= 0, accurate near 0 where exp(z) - 1 cancels.
fn expm1_pos(z: f32) -> f32 {
    if z < 1e-3 {
        return z * (1.0 + z * (0.5 + z * (1.0 / 6.0)));
    }
    return exp(z) - 1.0;
}
