//! The reduced-precision path of the dense layers (`embed.precision` `auto`, the default, or
//! `fp16`): weights and activations in IEEE half precision, multiplied with AVX512-FP16's
//! `vfmadd231ph`, which does 32 multiply-adds per instruction where fp32 does 16.
//!
//! Half precision sums drift over long dot products, so each product is summed in halves over at
//! most [`KC`] terms only, and those partial sums are added in `f32`. Measured on the 64 reference
//! texts, the worst cosine against sentence-transformers is then 0.99997 (fp16 sums over all 384
//! or 1536 terms: 0.99995). Attention (3 % of the FLOPs), layer norms and GELU stay in `f32`.
//!
//! The instruction set is detected at run time ([`supported`]); without it the model keeps the
//! fp32 path. The intrinsics of AVX512-FP16 are not stable in Rust yet, so the one inner kernel
//! is inline assembly; conversions use the stable AVX-512F intrinsics.

/// Terms summed in half precision before the partial sum is added in `f32`.
pub const KC: usize = 256;
/// Rows and columns of one kernel call's output tile.
const MR: usize = 8;
const NR: usize = 96;

/// Whether this CPU (and OS) runs AVX-512F, AVX-512BW and AVX512-FP16.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static S: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *S.get_or_init(|| {
            // `is_x86_feature_detected!` also checks that the OS saves the zmm registers; the
            // FP16 bit itself (CPUID leaf 7, EDX bit 23) is read directly.
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && (std::arch::x86_64::__cpuid_count(7, 0).edx >> 23) & 1 == 1
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A `k × n` weight matrix (row-major, `in × out`) in half precision, as the kernel reads it:
/// panels of [`NR`] columns, each panel `k` rows of `NR` halves.
pub struct PackedB {
    data: Vec<u16>,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Packs `w` (`k × n`, row-major). `None` when `n` is not a multiple of 96, `k` not a multiple
    /// of 4, or the CPU lacks the instructions (all of this model's matrices qualify).
    pub fn pack(w: &[f32], k: usize, n: usize) -> Option<PackedB> {
        if !supported() || k == 0 || n == 0 || !n.is_multiple_of(NR) || !k.is_multiple_of(4) || w.len() < k * n {
            return None;
        }
        let mut data = vec![0u16; k * n];
        let mut row = [0f32; NR];
        for p in 0..n / NR {
            for r in 0..k {
                row.copy_from_slice(&w[r * n + p * NR..][..NR]);
                let dst = &mut data[(p * k + r) * NR..][..NR];
                // SAFETY: `supported()` was checked above.
                unsafe { to_half(&row, dst, false) };
            }
        }
        Some(PackedB { data, k, n })
    }
}

/// Per-thread buffers of the fp16 path.
#[derive(Default)]
pub struct Scratch {
    a: Vec<u16>,
}

/// The left operand of a dense layer's product: activations, taken as they are or through GELU.
pub enum Lhs<'a> {
    Plain(&'a [f32]),
    /// The GELU of these activations. The fp16 path applies it while converting them to halves
    /// (a pass fewer over the widest activations of the model, the feed-forward layer's 1,536 per
    /// token) and leaves them as they are; the fp32 path applies it to them in place first.
    Gelu(&'a mut [f32]),
}

/// What a matrix product does with `dst` and the layer's bias.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Out {
    /// `dst = bias + a · b` (what `dst` held is ignored).
    Set,
    /// `dst += bias + a · b` (a residual connection).
    Add,
}

/// `dst (m × n, dense) = [dst +] bias + a (m × k, dense) · b`, products and partial sums of up to
/// [`KC`] terms in half precision, the partial sums added in `f32`. The bias is added with the
/// first partial sum, so `dst` is not passed over once more for it. Panics (an internal bug) if
/// the shapes disagree or the CPU lacks the instructions ([`PackedB::pack`] returns `None` then).
pub fn matmul(dst: &mut [f32], a: Lhs<'_>, m: usize, b: &PackedB, bias: &[f32], out: Out, s: &mut Scratch) {
    let (k, n) = (b.k, b.n);
    let (a, gelu) = match a {
        Lhs::Plain(a) => (a, false),
        Lhs::Gelu(a) => (&*a, true),
    };
    assert!(a.len() >= m * k && dst.len() >= m * n && bias.len() == n, "fp16 matmul shapes");
    assert!(supported(), "fp16 matmul without AVX512-FP16");
    if s.a.len() < MR * k {
        s.a.resize(MR * k, 0);
    }
    let mut tile = [0u16; MR * NR];
    // One block of MR rows at a time: its activations are converted to halves into an L1-sized
    // buffer (zero rows pad the last block), then multiplied by every panel of the packed weights
    // (at most 1.2 MB for this model, so they stay in L2: converting the whole of `a` up front
    // would push them out for large m). Each k-chunk's half-precision tile is added straight
    // into `dst`, whose MR rows stay in L1 across the chunks.
    for i0 in (0..m).step_by(MR) {
        let rows = MR.min(m - i0);
        let ah = &mut s.a[..MR * k];
        // SAFETY: `supported()` holds.
        unsafe { to_half(&a[i0 * k..(i0 + rows) * k], &mut ah[..rows * k], gelu) };
        ah[rows * k..].fill(0);
        for p in 0..n / NR {
            let panel = &b.data[p * k * NR..][..k * NR];
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                let block = &s.a[k0..][..(MR - 1) * k + kc];
                // SAFETY: `block` holds MR rows of stride k with kc halves each from its start, the
                // panel slice kc rows of NR halves, `tile` MR × NR halves; kc is at least 4 and a
                // multiple of 4 (as KC and k are), and the CPU supports the instructions.
                unsafe {
                    kernel(block.as_ptr(), k, panel[k0 * NR..][..kc * NR].as_ptr(), kc, tile.as_mut_ptr());
                    let first = if k0 == 0 { Some((&bias[p * NR..][..NR], out)) } else { None };
                    add_tile(&mut dst[i0 * n + p * NR..], n, rows, &tile, first);
                }
            }
        }
    }
}

/// `dst[i] = src[i]`, or `gelu(src[i])` with `gelu` (the GELU of [`super::kernels::gelu`]),
/// rounded to half precision (to nearest, ties to even).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn to_half(src: &[f32], dst: &mut [u16], gelu: bool) {
    use super::kernels::avx512::gelu16;
    use std::arch::x86_64::*;
    assert_eq!(src.len(), dst.len());
    let mut i = 0;
    while i + 16 <= src.len() {
        let v = _mm512_loadu_ps(src.as_ptr().add(i));
        let v = if gelu { gelu16(v) } else { v };
        let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
        i += 16;
    }
    if i < src.len() {
        let mut buf = [0f32; 16];
        let mut out = [0u16; 16];
        let rest = src.len() - i;
        buf[..rest].copy_from_slice(&src[i..]);
        let v = _mm512_loadu_ps(buf.as_ptr());
        let v = if gelu { gelu16(v) } else { v };
        let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, h);
        dst[i..].copy_from_slice(&out[..rest]);
    }
}

/// For the first `rows` rows of one tile, `dst[r * ldd + c] += tile[r * NR + c]` (halves widened to
/// `f32`). With `first` (the tile of the first partial sum) the bias is added too, and with
/// [`Out::Set`] what `dst` held is replaced instead of added to.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_tile(dst: &mut [f32], ldd: usize, rows: usize, tile: &[u16; MR * NR], first: Option<(&[f32], Out)>) {
    use std::arch::x86_64::*;
    assert!((1..=MR).contains(&rows) && dst.len() >= (rows - 1) * ldd + NR);
    for r in 0..rows {
        let d = dst.as_mut_ptr().add(r * ldd);
        let t = tile.as_ptr().add(r * NR);
        for c in 0..NR / 16 {
            let h = _mm512_cvtph_ps(_mm256_loadu_si256(t.add(c * 16) as *const __m256i));
            let dc = d.add(c * 16);
            let base = match first {
                None => _mm512_loadu_ps(dc),
                Some((bias, Out::Add)) => _mm512_add_ps(_mm512_loadu_ps(dc), _mm512_loadu_ps(bias.as_ptr().add(c * 16))),
                Some((bias, Out::Set)) => _mm512_loadu_ps(bias.as_ptr().add(c * 16)),
            };
            _mm512_storeu_ps(dc, _mm512_add_ps(base, h));
        }
    }
}

/// The 8 × 96 tile `out = a · b` over `kc` terms (a multiple of 4), in half precision: `a` is 8
/// rows `lda` halves apart, `b` is `kc` rows of 96 halves, `out` receives 8 rows of 96 halves.
/// Each step loads three vectors of `b` and broadcasts each row's half straight from memory into
/// 24 `vfmadd231ph`; four steps per loop, every address a base plus a constant (so each FMA with
/// its load stays one micro-op).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn kernel(a: *const u16, lda: usize, b: *const u16, kc: usize, out: *mut u16) {
    debug_assert!(kc >= 4 && kc.is_multiple_of(4));
    std::arch::asm!(
        "vpxord zmm0, zmm0, zmm0",
        "vpxord zmm1, zmm1, zmm1",
        "vpxord zmm2, zmm2, zmm2",
        "vpxord zmm3, zmm3, zmm3",
        "vpxord zmm4, zmm4, zmm4",
        "vpxord zmm5, zmm5, zmm5",
        "vpxord zmm6, zmm6, zmm6",
        "vpxord zmm7, zmm7, zmm7",
        "vpxord zmm8, zmm8, zmm8",
        "vpxord zmm9, zmm9, zmm9",
        "vpxord zmm10, zmm10, zmm10",
        "vpxord zmm11, zmm11, zmm11",
        "vpxord zmm12, zmm12, zmm12",
        "vpxord zmm13, zmm13, zmm13",
        "vpxord zmm14, zmm14, zmm14",
        "vpxord zmm15, zmm15, zmm15",
        "vpxord zmm16, zmm16, zmm16",
        "vpxord zmm17, zmm17, zmm17",
        "vpxord zmm18, zmm18, zmm18",
        "vpxord zmm19, zmm19, zmm19",
        "vpxord zmm20, zmm20, zmm20",
        "vpxord zmm21, zmm21, zmm21",
        "vpxord zmm22, zmm22, zmm22",
        "vpxord zmm23, zmm23, zmm23",
        "2:",
        "vmovdqu16 zmm24, [{b} + 0]",
        "vmovdqu16 zmm25, [{b} + 64]",
        "vmovdqu16 zmm26, [{b} + 128]",
        "vfmadd231ph zmm0, zmm24, word ptr [{a0}]{{1to32}}",
        "vfmadd231ph zmm1, zmm25, word ptr [{a0}]{{1to32}}",
        "vfmadd231ph zmm2, zmm26, word ptr [{a0}]{{1to32}}",
        "vfmadd231ph zmm3, zmm24, word ptr [{a1}]{{1to32}}",
        "vfmadd231ph zmm4, zmm25, word ptr [{a1}]{{1to32}}",
        "vfmadd231ph zmm5, zmm26, word ptr [{a1}]{{1to32}}",
        "vfmadd231ph zmm6, zmm24, word ptr [{a2}]{{1to32}}",
        "vfmadd231ph zmm7, zmm25, word ptr [{a2}]{{1to32}}",
        "vfmadd231ph zmm8, zmm26, word ptr [{a2}]{{1to32}}",
        "vfmadd231ph zmm9, zmm24, word ptr [{a3}]{{1to32}}",
        "vfmadd231ph zmm10, zmm25, word ptr [{a3}]{{1to32}}",
        "vfmadd231ph zmm11, zmm26, word ptr [{a3}]{{1to32}}",
        "vfmadd231ph zmm12, zmm24, word ptr [{a4}]{{1to32}}",
        "vfmadd231ph zmm13, zmm25, word ptr [{a4}]{{1to32}}",
        "vfmadd231ph zmm14, zmm26, word ptr [{a4}]{{1to32}}",
        "vfmadd231ph zmm15, zmm24, word ptr [{a5}]{{1to32}}",
        "vfmadd231ph zmm16, zmm25, word ptr [{a5}]{{1to32}}",
        "vfmadd231ph zmm17, zmm26, word ptr [{a5}]{{1to32}}",
        "vfmadd231ph zmm18, zmm24, word ptr [{a6}]{{1to32}}",
        "vfmadd231ph zmm19, zmm25, word ptr [{a6}]{{1to32}}",
        "vfmadd231ph zmm20, zmm26, word ptr [{a6}]{{1to32}}",
        "vfmadd231ph zmm21, zmm24, word ptr [{a7}]{{1to32}}",
        "vfmadd231ph zmm22, zmm25, word ptr [{a7}]{{1to32}}",
        "vfmadd231ph zmm23, zmm26, word ptr [{a7}]{{1to32}}",
        "vmovdqu16 zmm24, [{b} + 192]",
        "vmovdqu16 zmm25, [{b} + 256]",
        "vmovdqu16 zmm26, [{b} + 320]",
        "vfmadd231ph zmm0, zmm24, word ptr [{a0} + 2]{{1to32}}",
        "vfmadd231ph zmm1, zmm25, word ptr [{a0} + 2]{{1to32}}",
        "vfmadd231ph zmm2, zmm26, word ptr [{a0} + 2]{{1to32}}",
        "vfmadd231ph zmm3, zmm24, word ptr [{a1} + 2]{{1to32}}",
        "vfmadd231ph zmm4, zmm25, word ptr [{a1} + 2]{{1to32}}",
        "vfmadd231ph zmm5, zmm26, word ptr [{a1} + 2]{{1to32}}",
        "vfmadd231ph zmm6, zmm24, word ptr [{a2} + 2]{{1to32}}",
        "vfmadd231ph zmm7, zmm25, word ptr [{a2} + 2]{{1to32}}",
        "vfmadd231ph zmm8, zmm26, word ptr [{a2} + 2]{{1to32}}",
        "vfmadd231ph zmm9, zmm24, word ptr [{a3} + 2]{{1to32}}",
        "vfmadd231ph zmm10, zmm25, word ptr [{a3} + 2]{{1to32}}",
        "vfmadd231ph zmm11, zmm26, word ptr [{a3} + 2]{{1to32}}",
        "vfmadd231ph zmm12, zmm24, word ptr [{a4} + 2]{{1to32}}",
        "vfmadd231ph zmm13, zmm25, word ptr [{a4} + 2]{{1to32}}",
        "vfmadd231ph zmm14, zmm26, word ptr [{a4} + 2]{{1to32}}",
        "vfmadd231ph zmm15, zmm24, word ptr [{a5} + 2]{{1to32}}",
        "vfmadd231ph zmm16, zmm25, word ptr [{a5} + 2]{{1to32}}",
        "vfmadd231ph zmm17, zmm26, word ptr [{a5} + 2]{{1to32}}",
        "vfmadd231ph zmm18, zmm24, word ptr [{a6} + 2]{{1to32}}",
        "vfmadd231ph zmm19, zmm25, word ptr [{a6} + 2]{{1to32}}",
        "vfmadd231ph zmm20, zmm26, word ptr [{a6} + 2]{{1to32}}",
        "vfmadd231ph zmm21, zmm24, word ptr [{a7} + 2]{{1to32}}",
        "vfmadd231ph zmm22, zmm25, word ptr [{a7} + 2]{{1to32}}",
        "vfmadd231ph zmm23, zmm26, word ptr [{a7} + 2]{{1to32}}",
        "vmovdqu16 zmm24, [{b} + 384]",
        "vmovdqu16 zmm25, [{b} + 448]",
        "vmovdqu16 zmm26, [{b} + 512]",
        "vfmadd231ph zmm0, zmm24, word ptr [{a0} + 4]{{1to32}}",
        "vfmadd231ph zmm1, zmm25, word ptr [{a0} + 4]{{1to32}}",
        "vfmadd231ph zmm2, zmm26, word ptr [{a0} + 4]{{1to32}}",
        "vfmadd231ph zmm3, zmm24, word ptr [{a1} + 4]{{1to32}}",
        "vfmadd231ph zmm4, zmm25, word ptr [{a1} + 4]{{1to32}}",
        "vfmadd231ph zmm5, zmm26, word ptr [{a1} + 4]{{1to32}}",
        "vfmadd231ph zmm6, zmm24, word ptr [{a2} + 4]{{1to32}}",
        "vfmadd231ph zmm7, zmm25, word ptr [{a2} + 4]{{1to32}}",
        "vfmadd231ph zmm8, zmm26, word ptr [{a2} + 4]{{1to32}}",
        "vfmadd231ph zmm9, zmm24, word ptr [{a3} + 4]{{1to32}}",
        "vfmadd231ph zmm10, zmm25, word ptr [{a3} + 4]{{1to32}}",
        "vfmadd231ph zmm11, zmm26, word ptr [{a3} + 4]{{1to32}}",
        "vfmadd231ph zmm12, zmm24, word ptr [{a4} + 4]{{1to32}}",
        "vfmadd231ph zmm13, zmm25, word ptr [{a4} + 4]{{1to32}}",
        "vfmadd231ph zmm14, zmm26, word ptr [{a4} + 4]{{1to32}}",
        "vfmadd231ph zmm15, zmm24, word ptr [{a5} + 4]{{1to32}}",
        "vfmadd231ph zmm16, zmm25, word ptr [{a5} + 4]{{1to32}}",
        "vfmadd231ph zmm17, zmm26, word ptr [{a5} + 4]{{1to32}}",
        "vfmadd231ph zmm18, zmm24, word ptr [{a6} + 4]{{1to32}}",
        "vfmadd231ph zmm19, zmm25, word ptr [{a6} + 4]{{1to32}}",
        "vfmadd231ph zmm20, zmm26, word ptr [{a6} + 4]{{1to32}}",
        "vfmadd231ph zmm21, zmm24, word ptr [{a7} + 4]{{1to32}}",
        "vfmadd231ph zmm22, zmm25, word ptr [{a7} + 4]{{1to32}}",
        "vfmadd231ph zmm23, zmm26, word ptr [{a7} + 4]{{1to32}}",
        "vmovdqu16 zmm24, [{b} + 576]",
        "vmovdqu16 zmm25, [{b} + 640]",
        "vmovdqu16 zmm26, [{b} + 704]",
        "vfmadd231ph zmm0, zmm24, word ptr [{a0} + 6]{{1to32}}",
        "vfmadd231ph zmm1, zmm25, word ptr [{a0} + 6]{{1to32}}",
        "vfmadd231ph zmm2, zmm26, word ptr [{a0} + 6]{{1to32}}",
        "vfmadd231ph zmm3, zmm24, word ptr [{a1} + 6]{{1to32}}",
        "vfmadd231ph zmm4, zmm25, word ptr [{a1} + 6]{{1to32}}",
        "vfmadd231ph zmm5, zmm26, word ptr [{a1} + 6]{{1to32}}",
        "vfmadd231ph zmm6, zmm24, word ptr [{a2} + 6]{{1to32}}",
        "vfmadd231ph zmm7, zmm25, word ptr [{a2} + 6]{{1to32}}",
        "vfmadd231ph zmm8, zmm26, word ptr [{a2} + 6]{{1to32}}",
        "vfmadd231ph zmm9, zmm24, word ptr [{a3} + 6]{{1to32}}",
        "vfmadd231ph zmm10, zmm25, word ptr [{a3} + 6]{{1to32}}",
        "vfmadd231ph zmm11, zmm26, word ptr [{a3} + 6]{{1to32}}",
        "vfmadd231ph zmm12, zmm24, word ptr [{a4} + 6]{{1to32}}",
        "vfmadd231ph zmm13, zmm25, word ptr [{a4} + 6]{{1to32}}",
        "vfmadd231ph zmm14, zmm26, word ptr [{a4} + 6]{{1to32}}",
        "vfmadd231ph zmm15, zmm24, word ptr [{a5} + 6]{{1to32}}",
        "vfmadd231ph zmm16, zmm25, word ptr [{a5} + 6]{{1to32}}",
        "vfmadd231ph zmm17, zmm26, word ptr [{a5} + 6]{{1to32}}",
        "vfmadd231ph zmm18, zmm24, word ptr [{a6} + 6]{{1to32}}",
        "vfmadd231ph zmm19, zmm25, word ptr [{a6} + 6]{{1to32}}",
        "vfmadd231ph zmm20, zmm26, word ptr [{a6} + 6]{{1to32}}",
        "vfmadd231ph zmm21, zmm24, word ptr [{a7} + 6]{{1to32}}",
        "vfmadd231ph zmm22, zmm25, word ptr [{a7} + 6]{{1to32}}",
        "vfmadd231ph zmm23, zmm26, word ptr [{a7} + 6]{{1to32}}",
        "add {a0}, 8",
        "add {a1}, 8",
        "add {a2}, 8",
        "add {a3}, 8",
        "add {a4}, 8",
        "add {a5}, 8",
        "add {a6}, 8",
        "add {a7}, 8",
        "add {b}, 768",
        "sub {kc}, 4",
        "jnz 2b",
        "vmovdqu16 [{out}], zmm0",
        "vmovdqu16 [{out} + 64], zmm1",
        "vmovdqu16 [{out} + 128], zmm2",
        "vmovdqu16 [{out} + 192], zmm3",
        "vmovdqu16 [{out} + 256], zmm4",
        "vmovdqu16 [{out} + 320], zmm5",
        "vmovdqu16 [{out} + 384], zmm6",
        "vmovdqu16 [{out} + 448], zmm7",
        "vmovdqu16 [{out} + 512], zmm8",
        "vmovdqu16 [{out} + 576], zmm9",
        "vmovdqu16 [{out} + 640], zmm10",
        "vmovdqu16 [{out} + 704], zmm11",
        "vmovdqu16 [{out} + 768], zmm12",
        "vmovdqu16 [{out} + 832], zmm13",
        "vmovdqu16 [{out} + 896], zmm14",
        "vmovdqu16 [{out} + 960], zmm15",
        "vmovdqu16 [{out} + 1024], zmm16",
        "vmovdqu16 [{out} + 1088], zmm17",
        "vmovdqu16 [{out} + 1152], zmm18",
        "vmovdqu16 [{out} + 1216], zmm19",
        "vmovdqu16 [{out} + 1280], zmm20",
        "vmovdqu16 [{out} + 1344], zmm21",
        "vmovdqu16 [{out} + 1408], zmm22",
        "vmovdqu16 [{out} + 1472], zmm23",
        a0 = inout(reg) a => _,
        a1 = inout(reg) a.add(lda) => _,
        a2 = inout(reg) a.add(2 * lda) => _,
        a3 = inout(reg) a.add(3 * lda) => _,
        a4 = inout(reg) a.add(4 * lda) => _,
        a5 = inout(reg) a.add(5 * lda) => _,
        a6 = inout(reg) a.add(6 * lda) => _,
        a7 = inout(reg) a.add(7 * lda) => _,
        b = inout(reg) b => _,
        kc = inout(reg) kc => _,
        out = in(reg) out,
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _, out("zmm24") _, out("zmm25") _, out("zmm26") _,
        options(nostack),
    );
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn to_half(_: &[f32], _: &mut [u16], _: bool) {
    unreachable!("fp16 path on a CPU without it")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn add_tile(_: &mut [f32], _: usize, _: usize, _: &[u16; MR * NR], _: Option<(&[f32], Out)>) {
    unreachable!("fp16 path on a CPU without it")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(_: *const u16, _: usize, _: *const u16, _: usize, _: *mut u16) {
    unreachable!("fp16 path on a CPU without it")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix in [-scale, scale).
    fn matrix(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// Every shape the model uses (and odd row counts) against an f64 reference: the error of
    /// each output stays within what half-precision rounding of the inputs and of sums of up to
    /// KC terms allows.
    #[test]
    fn fp16_matmul_matches_f64_within_half_precision_or_is_refused_without_the_cpu() {
        if !supported() {
            // No AVX512-FP16 here: the path must refuse to pack, so the model keeps fp32.
            assert!(PackedB::pack(&[0.0; 96 * 4], 4, 96).is_none());
            eprintln!("no AVX512-FP16 on this CPU: checked that the fp16 path is refused");
            return;
        }
        assert!(PackedB::pack(&[0.0; 64 * 4], 4, 64).is_none(), "n must be a multiple of 96");
        let mut s = Scratch::default();
        assert!(PackedB::pack(&[0.0; 96 * 6], 6, 96).is_none(), "k must be a multiple of 4");
        let shapes = [(1, 384, 1152), (13, 384, 384), (37, 384, 1536), (25, 1536, 384), (8, 132, 96), (5, 4, 96), (9, 260, 192), (11, 1536, 384)];
        for (((m, k, n), out), gelu) in shapes.into_iter().zip([Out::Set, Out::Add].into_iter().cycle()).zip([false, false, true].into_iter().cycle())
        {
            let raw = matrix(m * k, (m * 31 + k) as u64, 3.0);
            let w = matrix(k * n, (k * 17 + n) as u64, 0.2);
            let before = matrix(m * n, 7, 1.0);
            let bias = matrix(n, 11, 1.0);
            let b = PackedB::pack(&w, k, n).expect("packs");
            let mut got = before.clone();
            let mut input = raw.clone();
            let lhs = if gelu { Lhs::Gelu(&mut input) } else { Lhs::Plain(&raw) };
            matmul(&mut got, lhs, m, &b, &bias, out, &mut s);
            assert_eq!(input, raw, "the fp16 path leaves its input as it is");
            // What the product must have multiplied: the activations, through GELU if asked.
            let mut a = raw.clone();
            if gelu {
                crate::embed::kernels::gelu_portable(&mut a);
            }
            for i in 0..m {
                for j in 0..n {
                    let kept = if out == Out::Add { before[i * n + j] as f64 } else { 0.0 };
                    let exact: f64 = (0..k).map(|t| a[i * k + t] as f64 * w[t * n + j] as f64).sum::<f64>() + bias[j] as f64 + kept;
                    let mag: f64 = (0..k).map(|t| (a[i * k + t] as f64 * w[t * n + j] as f64).abs()).sum();
                    let err = (got[i * n + j] as f64 - exact).abs();
                    assert!(err <= 4e-3 * mag + 1e-3, "({m}×{k}·{k}×{n}, gelu {gelu}) [{i},{j}]: {} vs {exact} (Σ|terms| {mag})", got[i * n + j]);
                }
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release --lib half_vs_fp32_gemm -- --ignored --nocapture`: GMAC/s of both
    /// paths on the model's shapes (one thread).
    #[test]
    #[ignore]
    fn half_vs_fp32_gemm() {
        assert!(supported(), "needs AVX512-FP16");
        for (m, k, n) in [(512, 384, 1152), (512, 384, 1536), (512, 1536, 384), (64, 384, 1152)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
            let w: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 5000.0 - 0.1).collect();
            let b = PackedB::pack(&w, k, n).unwrap();
            let mut dst = vec![0f32; m * n];
            let bias = vec![0f32; n];
            let mut s = Scratch::default();
            let reps = (2e9 / (m * k * n) as f64).ceil() as usize;
            // One untimed product of each kind first, so page faults and a cold cache are not timed.
            matmul(&mut dst, Lhs::Plain(&a), m, &b, &bias, Out::Add, &mut s);
            crate::embed::kernels::matmul(
                &mut dst,
                n,
                crate::embed::kernels::MatRef::dense(&a, m, k),
                crate::embed::kernels::MatRef::dense(&w, k, n),
                true,
            );
            let t = std::time::Instant::now();
            for _ in 0..reps {
                matmul(&mut dst, Lhs::Plain(&a), m, &b, &bias, Out::Add, &mut s);
            }
            let h = (m * k * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                crate::embed::kernels::matmul(
                    &mut dst,
                    n,
                    crate::embed::kernels::MatRef::dense(&a, m, k),
                    crate::embed::kernels::MatRef::dense(&w, k, n),
                    true,
                );
            }
            let f = (m * k * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
            println!("{m}x{k}x{n}: fp16 {h:.1} GMAC/s, fp32 {f:.1} GMAC/s, ratio {:.2}", h / f);
        }
    }
}
