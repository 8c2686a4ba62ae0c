//! Dense linear algebra for EASE on candle tensors.
//!
//! Candle has matrix products but no inverse, so [`spd_inverse`] inverts a symmetric positive
//! definite matrix by recursive 2×2 block elimination (Schur complements). Every O(n³) step is a
//! candle `matmul` (the optimised `gemm` kernels, also in debug builds of this crate); only blocks of
//! at most [`BASE`] rows are inverted by plain Gauss–Jordan. For an SPD matrix every leading block
//! and every Schur complement is SPD too, so no pivoting is needed; EASE adds λI (λ ≥ 1), which
//! bounds the condition number and keeps f32 accurate (see the unit test).
//! Cost ≈ (2/3)·n³ multiply-adds; memory ≈ 4 dense n×n f32 matrices at the top level.

use candle_core::{DType, Device, Tensor};

/// Blocks up to this size are inverted directly.
const BASE: usize = 64;

/// The inverse of the symmetric positive definite `a` (n × n, f32, CPU).
pub fn spd_inverse(a: &Tensor) -> candle_core::Result<Tensor> {
    let n = a.dim(0)?;
    if n <= BASE {
        return small_inverse(a);
    }
    let h = n / 2;
    let a11 = a.narrow(0, 0, h)?.narrow(1, 0, h)?.contiguous()?;
    let a12 = a.narrow(0, 0, h)?.narrow(1, h, n - h)?.contiguous()?;
    let a22 = a.narrow(0, h, n - h)?.narrow(1, h, n - h)?.contiguous()?;
    let b = spd_inverse(&a11)?; // A11⁻¹
    drop(a11);
    let c = b.matmul(&a12)?; // A11⁻¹ A12   (h × m)
    let s = (&a22 - a12.t()?.contiguous()?.matmul(&c)?)?; // Schur complement A22 − A21 A11⁻¹ A12
    drop((a12, a22));
    let si = spd_inverse(&s)?;
    drop(s);
    let tr = c.matmul(&si)?.neg()?; // −A11⁻¹ A12 S⁻¹
    let tl = (&b - tr.matmul(&c.t()?.contiguous()?)?)?; // A11⁻¹ + A11⁻¹ A12 S⁻¹ A21 A11⁻¹
    let bl = tr.t()?.contiguous()?;
    let top = Tensor::cat(&[&tl, &tr], 1)?;
    let bottom = Tensor::cat(&[&bl, &si], 1)?;
    Tensor::cat(&[&top, &bottom], 0)
}

/// Gauss–Jordan without pivoting (the input is SPD), in f64 for the small base blocks.
fn small_inverse(a: &Tensor) -> candle_core::Result<Tensor> {
    let n = a.dim(0)?;
    let flat: Vec<f32> = a.flatten_all()?.to_vec1()?;
    let mut m: Vec<f64> = flat.iter().map(|&x| x as f64).collect();
    let mut inv = vec![0f64; n * n];
    for i in 0..n {
        inv[i * n + i] = 1.0;
    }
    for k in 0..n {
        let p = m[k * n + k];
        if !(p.is_finite() && p > 0.0) {
            candle_core::bail!("matrix is not positive definite (pivot {k} = {p})");
        }
        let ip = 1.0 / p;
        for j in 0..n {
            m[k * n + j] *= ip;
            inv[k * n + j] *= ip;
        }
        for i in 0..n {
            if i == k {
                continue;
            }
            let f = m[i * n + k];
            if f == 0.0 {
                continue;
            }
            for j in 0..n {
                m[i * n + j] -= f * m[k * n + j];
                inv[i * n + j] -= f * inv[k * n + j];
            }
        }
    }
    let out: Vec<f32> = inv.into_iter().map(|x| x as f32).collect();
    Tensor::from_vec(out, (n, n), &Device::Cpu)
}

/// A dense n × n f32 tensor from a row-major buffer.
pub fn square(data: Vec<f32>, n: usize) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, (n, n), &Device::Cpu)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn inverse_of_a_regularised_gram_matrix() {
        // A Gram matrix of sparse 0/1 rows plus λI, like EASE's, of a size that recurses twice.
        let (users, n) = (400, 150);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut g = vec![0f32; n * n];
        for _ in 0..users {
            let items: Vec<usize> = (0..n).filter(|_| rng.random_bool(0.05)).collect();
            for &i in &items {
                for &j in &items {
                    g[i * n + j] += 1.0;
                }
            }
        }
        for i in 0..n {
            g[i * n + i] += 10.0;
        }
        let a = square(g, n).unwrap();
        let inv = spd_inverse(&a).unwrap();
        let prod: Vec<Vec<f32>> = a.matmul(&inv).unwrap().to_vec2().unwrap();
        let mut worst = 0f32;
        for (i, row) in prod.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((v - want).abs());
            }
        }
        assert!(worst < 1e-4, "A·A⁻¹ differs from I by {worst}");
    }

    #[test]
    fn refuses_an_indefinite_matrix() {
        let a = square(vec![1.0, 2.0, 2.0, 1.0], 2).unwrap();
        assert!(spd_inverse(&a).is_err());
    }
}
