//! Numeric kernels for the BERT forward pass: fused element-wise operations over `f32` rows and
//! a thin safe wrapper around the `gemm` crate.
//!
//! Every kernel is written once as plain scalar Rust in an `#[inline(always)]` body that LLVM can
//! auto-vectorise (independent accumulators for reductions, branch-free polynomials, no libm
//! calls). On x86-64 the body is additionally compiled inside `#[target_feature(enable =
//! "avx512f,…")]` and `"avx2,fma"` wrappers chosen at run time, so a build for the baseline target
//! still runs 16- or 8-wide on the machines we deploy to. Polynomials use plain `a * b + c` rather than
//! `mul_add`, which would become a libm call on the baseline target.

use gemm::Parallelism;

/// Whether the AVX2 + FMA versions of the kernels may be used on this CPU (cached by std).
#[inline]
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512 versions of the kernels may be used on this CPU (cached by std).
#[inline]
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && has_avx2()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `pub fn $name(args)` that dispatches to an AVX-512 or AVX2+FMA compilation of `$body`
/// when the CPU supports it, else to the baseline compilation of the same body.
macro_rules! multiversion {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            if has_avx512() {
                // SAFETY: the CPU supports the features `avx512` was compiled for.
                return unsafe { avx512($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                // SAFETY: the CPU supports the features `avx2` was compiled for.
                return unsafe { avx2($($arg),*) };
            }
            body($($arg),*)
        }
    };
}

const LANES: usize = 16;

/// Sum of a slice with `LANES` independent accumulators (vectorisable, deterministic order).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    let mut s = 0.0;
    for v in rest {
        s += v;
    }
    acc.iter().sum::<f32>() + s
}

/// Sum of squared deviations from `mean`.
#[inline(always)]
fn sum_sq_dev(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    let mut s = 0.0;
    for v in rest {
        s += (v - mean) * (v - mean);
    }
    acc.iter().sum::<f32>() + s
}

#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(rest) {
        m = if v > m { v } else { m };
    }
    m
}

/// `ln 2` split in two for `exp`'s range reduction (Cephes): a high part exact in a few bits, and
/// the rest.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `exp`'s polynomial on the reduced range (Cephes `expf`), highest power first.
#[allow(clippy::excessive_precision)] // the published coefficients, kept as written
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];
/// `erf`'s rational approximation (Eigen, XNNPACK): numerator and denominator in `x²`, highest
/// power first; the numerator is then multiplied by `x`.
#[allow(clippy::excessive_precision)] // the published coefficients, kept as written
const ERF_P: [f32; 7] = [-2.726_142_3e-10, 2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906_3e-4, -2.954_600e-3, -1.609_603_3e-2];
#[allow(clippy::excessive_precision)] // the published coefficients, kept as written
const ERF_Q: [f32; 5] = [-1.456_607_2e-5, -2.133_740_6e-4, -1.682_827e-3, -7.373_329_3e-3, -1.426_474e-2];

/// `exp(x)` for `x` in the softmax range, max. relative error about 2 ulp (Cephes `expf`
/// polynomial, branch-free range reduction; inputs below -87 flush towards 0).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let e = p * r * r + r + 1.0;
    // n is an integer in [-126, 127], so the biased exponent is a normal one.
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    e * scale
}

/// `erf(x)`, rational approximation used by Eigen and XNNPACK (error a few ulp over the f32
/// range; exactly ±1 beyond |x| = 4 to f32 precision).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ERF_P[0];
    for c in &ERF_P[1..] {
        p = p * x2 + c;
    }
    p *= x;
    let mut q = ERF_Q[0];
    for c in &ERF_Q[1..] {
        q = q * x2 + c;
    }
    p / q
}

/// In place: exact (erf-based) GELU, as BERT's `hidden_act = "gelu"`.
pub fn gelu(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F.
        return unsafe { avx512::gelu(xs) };
    }
    gelu_portable(xs)
}

multiversion! {
    /// [`gelu`] written once in scalar Rust (AVX2, baseline, and a check of the AVX-512 version).
    pub fn gelu_portable(xs: &mut [f32]) {
        const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
        for v in xs.iter_mut() {
            let x = *v;
            *v = 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2));
        }
    }
}

multiversion! {
    /// In place, for each row of width `gamma.len()`: LayerNorm with affine parameters.
    pub fn layer_norm(xs: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let d = gamma.len();
        for row in xs.chunks_exact_mut(d) {
            let mean = sum(row) / d as f32;
            let var = sum_sq_dev(row, mean) / d as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = (*v - mean) * rstd * g + b;
            }
        }
    }
}

/// In place, for each row of width `n`: softmax.
pub fn softmax_rows(xs: &mut [f32], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F.
        return unsafe { avx512::softmax_rows(xs, n) };
    }
    softmax_rows_portable(xs, n)
}

multiversion! {
    /// [`softmax_rows`] written once in scalar Rust (AVX2, baseline, and a check of the AVX-512
    /// version).
    pub fn softmax_rows_portable(xs: &mut [f32], n: usize) {
        for row in xs.chunks_exact_mut(n) {
            let m = max(row);
            // Whole vectors only: a short row's tail goes through a padded buffer, so no `exp`
            // runs one lane at a time (rows are as long as a sentence, often not a multiple of 16).
            let mut chunks = row.chunks_exact_mut(LANES);
            for c in &mut chunks {
                for v in c.iter_mut() {
                    *v = exp(*v - m);
                }
            }
            let tail = chunks.into_remainder();
            if !tail.is_empty() {
                let mut buf = [m; LANES];
                buf[..tail.len()].copy_from_slice(tail);
                for v in buf.iter_mut() {
                    *v = exp(*v - m);
                }
                let t = tail.len();
                tail.copy_from_slice(&buf[..t]);
            }
            let inv = 1.0 / sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

multiversion! {
    /// `dst[r] += bias` for every row `r` of width `bias.len()`.
    pub fn add_bias_rows(dst: &mut [f32], bias: &[f32]) {
        for row in dst.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

multiversion! {
    /// `dst[r] = bias` for every row `r` of width `bias.len()`.
    pub fn fill_rows(dst: &mut [f32], bias: &[f32]) {
        for row in dst.chunks_exact_mut(bias.len()) {
            row.copy_from_slice(bias);
        }
    }
}

/// Softmax and GELU by hand in AVX-512F. After the matrix products they were the largest costs of
/// a forward pass (about 10 % and 5 % with the fp16 products), and their auto-vectorised versions
/// spend much of it on short rows' tails, four passes over each row, and the `erf` division. Here a
/// row's tail is one masked vector, `exp` scales by `vscalefps`, the softmax makes three passes,
/// and the division is a reciprocal estimate refined by one Newton step (relative error about
/// 2^-28, below `f32` rounding). The polynomials are the portable versions' constants.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::{ERF_P, ERF_Q, EXP_POLY, LN2_HI, LN2_LO};
    use std::arch::x86_64::*;

    /// The mask of the first `len` (< 16) lanes.
    #[inline]
    fn tail_mask(len: usize) -> __mmask16 {
        ((1u32 << len) - 1) as __mmask16
    }

    /// [`super::exp`] on 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let e = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(e, n)
    }

    /// [`super::softmax_rows`].
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn softmax_rows(xs: &mut [f32], n: usize) {
        let (full, k) = (n / 16, tail_mask(n % 16));
        for row in xs.chunks_exact_mut(n) {
            let p = row.as_mut_ptr();
            // SAFETY (every access below): `full` whole vectors and a tail of `n % 16` lanes, read
            // and written under its mask, lie within the row's `n` floats.
            unsafe {
                let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
                for c in 0..full {
                    mx = _mm512_max_ps(mx, _mm512_loadu_ps(p.add(c * 16)));
                }
                if k != 0 {
                    mx = _mm512_mask_max_ps(mx, k, mx, _mm512_maskz_loadu_ps(k, p.add(full * 16)));
                }
                let m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
                let mut sum = _mm512_setzero_ps();
                for c in 0..full {
                    let e = exp(_mm512_sub_ps(_mm512_loadu_ps(p.add(c * 16)), m));
                    _mm512_storeu_ps(p.add(c * 16), e);
                    sum = _mm512_add_ps(sum, e);
                }
                if k != 0 {
                    let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(full * 16)), m));
                    _mm512_mask_storeu_ps(p.add(full * 16), k, e);
                    sum = _mm512_mask_add_ps(sum, k, sum, e);
                }
                let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
                for c in 0..full {
                    _mm512_storeu_ps(p.add(c * 16), _mm512_mul_ps(_mm512_loadu_ps(p.add(c * 16)), inv));
                }
                if k != 0 {
                    _mm512_mask_storeu_ps(p.add(full * 16), k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p.add(full * 16)), inv));
                }
            }
        }
    }

    /// GELU of 16 lanes, with [`super::erf`]'s rational approximation (also used by the fp16
    /// path, which applies it while converting activations to halves).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::embed) fn gelu16(x: __m512) -> __m512 {
        let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-4.0)), _mm512_set1_ps(4.0));
        let t2 = _mm512_mul_ps(t, t);
        let mut p = _mm512_set1_ps(ERF_P[0]);
        for c in &ERF_P[1..] {
            p = _mm512_fmadd_ps(p, t2, _mm512_set1_ps(*c));
        }
        let p = _mm512_mul_ps(p, t);
        let mut q = _mm512_set1_ps(ERF_Q[0]);
        for c in &ERF_Q[1..] {
            q = _mm512_fmadd_ps(q, t2, _mm512_set1_ps(*c));
        }
        // p / q as p · (1/q): a 14-bit estimate and one Newton step, r(2 − qr).
        let r = _mm512_rcp14_ps(q);
        let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0)));
        let erf = _mm512_mul_ps(p, r);
        let half_x = _mm512_mul_ps(x, _mm512_set1_ps(0.5));
        _mm512_fmadd_ps(half_x, erf, half_x)
    }

    /// [`super::gelu`].
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gelu(xs: &mut [f32]) {
        let (full, k) = (xs.len() / 16, tail_mask(xs.len() % 16));
        let p = xs.as_mut_ptr();
        // SAFETY: `full` whole vectors and a masked tail of `len % 16` lanes lie within `xs`.
        unsafe {
            for c in 0..full {
                _mm512_storeu_ps(p.add(c * 16), gelu16(_mm512_loadu_ps(p.add(c * 16))));
            }
            if k != 0 {
                _mm512_mask_storeu_ps(p.add(full * 16), k, gelu16(_mm512_maskz_loadu_ps(k, p.add(full * 16))));
            }
        }
    }
}

/// A strided, read-only view of an `f32` matrix inside a slice.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major `rows × cols` matrix.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The last index touched plus one (0 for an empty matrix).
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// `dst (m × n, row stride dst_rs) = [dst +] lhs · rhs`, single-threaded.
///
/// With `accumulate` the product is added to what `dst` holds (used to fuse bias and residual
/// additions into the matrix product). Panics (an internal bug, not an input error) if a view
/// does not fit its slice or the shapes disagree.
pub fn matmul(dst: &mut [f32], dst_rs: usize, lhs: MatRef<'_>, rhs: MatRef<'_>, accumulate: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "matmul inner dimensions");
    assert!(lhs.extent() <= lhs.data.len() && rhs.extent() <= rhs.data.len());
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * dst_rs + n <= dst.len(), "matmul destination too small");
    // SAFETY: the asserts above keep every access of all three views inside their slices; `dst`
    // is exclusively borrowed and cannot alias the shared `lhs`/`rhs` borrows.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut x = -87.0f32;
        while x <= 10.0 {
            let (a, b) = (exp(x), x.exp());
            assert!(((a - b) / b).abs() < 4e-7, "exp({x}) = {a}, std {b}");
            x += 0.0137;
        }
    }

    #[test]
    fn erf_is_accurate() {
        // Reference values of erf from a high-precision source.
        let cases = [
            (0.0f32, 0.0f32),
            (0.1, 0.112_462_92),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (1.5, 0.966_105_15),
            (2.0, 0.995_322_3),
            (3.0, 0.999_977_9),
            (5.0, 1.0),
        ];
        for (x, want) in cases {
            assert!((erf(x) - want).abs() < 3e-7, "erf({x}) = {}, want {want}", erf(x));
            assert!((erf(-x) + want).abs() < 3e-7);
        }
    }

    #[test]
    fn softmax_and_layer_norm() {
        let mut xs = vec![1.0, 2.0, 3.0, -1e30, 0.0, 0.0, 0.0, 0.0];
        softmax_rows(&mut xs, 4);
        let s: f32 = xs[..4].iter().sum();
        assert!((s - 1.0).abs() < 1e-6 && xs[3] < 1e-30 && (xs[4] - 0.25).abs() < 1e-7);

        let mut row: Vec<f32> = (0..384).map(|i| i as f32).collect();
        layer_norm(&mut row, &[1.0; 384], &[0.0; 384], 1e-12);
        let mean: f32 = row.iter().sum::<f32>() / 384.0;
        let var: f32 = row.iter().map(|v| v * v).sum::<f32>() / 384.0;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4);
    }

    /// The hand-written AVX-512 softmax and GELU (what runs on this CPU when it has AVX-512)
    /// agree with the portable ones, for rows with and without a tail and inputs across the
    /// range (GELU's saturated ends, softmax rows whose spread underflows `exp`).
    #[test]
    fn dispatched_softmax_and_gelu_match_the_portable_ones() {
        let mut x = 12345u64;
        let mut next = move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for n in [1, 5, 16, 17, 31, 44, 64, 100, 256] {
            for scale in [0.1f32, 3.0, 30.0, 300.0] {
                let xs: Vec<f32> = (0..3 * n).map(|_| next() * scale).collect();
                let (mut a, mut b) = (xs.clone(), xs.clone());
                softmax_rows(&mut a, n);
                softmax_rows_portable(&mut b, n);
                for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                    assert!((u - v).abs() <= 2e-6 * v.abs().max(1e-30), "softmax n={n} scale={scale} [{i}]: {u} vs {v}");
                }
                let (mut a, mut b) = (xs.clone(), xs.clone());
                gelu(&mut a);
                gelu_portable(&mut b);
                for (i, ((u, v), x)) in a.iter().zip(&b).zip(&xs).enumerate() {
                    // x/2 · (1 + erf) cancels for large negative x: an ulp of erf is 6e-8 · |x|/2.
                    assert!((u - v).abs() <= 2e-6 * v.abs() + 2e-7 * x.abs().max(1.0), "gelu n={n} scale={scale} [{i}] x={x}: {u} vs {v}");
                }
            }
        }
    }

    #[test]
    fn matmul_strided() {
        // lhs 2×3, rhs given transposed (3×2 view of a 2×3 buffer).
        let lhs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let rhs_t = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let rhs = MatRef { data: &rhs_t, rows: 3, cols: 2, row_stride: 1, col_stride: 3 };
        let mut dst = [10.0; 4];
        matmul(&mut dst, 2, MatRef::dense(&lhs, 2, 3), rhs, true);
        assert_eq!(dst, [14.0, 12.0, 20.0, 15.0]);
    }
}
