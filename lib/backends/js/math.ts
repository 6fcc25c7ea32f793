/**
 * The numerical building blocks of the reference forward pass. Loops are plain and accumulate in
 * float64 (JS numbers), so this is as exact as the stored float32 weights allow.
 */

const SQRT_PI = Math.sqrt(Math.PI);

/**
 * The error function to double precision. JavaScript has no Math.erf: below |x| = 3 the Maclaurin
 * series converges with little cancellation (its largest term is below e^9 ≈ 8e3 times the result);
 * above, erfc's continued fraction (Lentz's method) converges in a few dozen steps.
 */
export function erf(x: number): number {
  const z = Math.abs(x);
  if (z < 3) {
    const z2 = z * z;
    let term = z; // z^(2n+1) (-1)^n / n!
    let sum = z;
    for (let n = 1; n < 200; n++) {
      term *= -z2 / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    const value = (2 / SQRT_PI) * sum;
    return x < 0 ? -value : value;
  }
  // erfc(z) = exp(-z^2)/sqrt(pi) * 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + 2/(z + ...)))))
  const tiny = 1e-300;
  let f = z;
  let C = z;
  let D = 0;
  for (let n = 1; n < 500; n++) {
    const a = n / 2;
    D = z + a * D;
    if (D === 0) D = tiny;
    C = z + a / C;
    if (C === 0) C = tiny;
    D = 1 / D;
    const delta = C * D;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  const erfc = Math.exp(-z * z) / (SQRT_PI * f);
  return x < 0 ? erfc - 1 : 1 - erfc;
}

/** Exact GELU, as PyTorch's nn.GELU(): x * Φ(x). In place over `a`. */
export function geluInPlace(a: Float32Array): void {
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as number;
    a[i] = 0.5 * x * (1 + erf(x * Math.SQRT1_2));
  }
}

/**
 * LayerNorm over rows of width C (biased variance, eps 1e-5, as torch): out[t] = norm(x[t]) * w + b.
 * x, out: (T, C).
 */
export function layerNorm(
  out: Float32Array,
  x: Float32Array,
  weight: Float32Array,
  bias: Float32Array | null,
  T: number,
  C: number,
): void {
  for (let t = 0; t < T; t++) {
    const base = t * C;
    let mean = 0;
    for (let i = 0; i < C; i++) mean += x[base + i] as number;
    mean /= C;
    let variance = 0;
    for (let i = 0; i < C; i++) {
      const d = (x[base + i] as number) - mean;
      variance += d * d;
    }
    variance /= C;
    const rstd = 1 / Math.sqrt(variance + 1e-5);
    for (let i = 0; i < C; i++) {
      const normed = ((x[base + i] as number) - mean) * rstd;
      out[base + i] = normed * (weight[i] as number) + (bias === null ? 0 : (bias[i] as number));
    }
  }
}

/**
 * A Linear layer in PyTorch's layout: out[t, o] = sum_i x[t, i] * W[o, i] + b[o].
 * x: (T, IN), W: (OUT, IN), b: (OUT) or null, out: (T, OUT).
 */
export function linear(
  out: Float32Array,
  x: Float32Array,
  W: Float32Array,
  b: Float32Array | null,
  T: number,
  IN: number,
  OUT: number,
): void {
  for (let o = 0; o < OUT; o++) {
    const wBase = o * IN;
    const bias = b === null ? 0 : (b[o] as number);
    for (let t = 0; t < T; t++) {
      const xBase = t * IN;
      let sum = 0;
      for (let i = 0; i < IN; i++) sum += (x[xBase + i] as number) * (W[wBase + i] as number);
      out[t * OUT + o] = sum + bias;
    }
  }
}

/** out += y elementwise (the residual connection). */
export function addInPlace(out: Float32Array, y: Float32Array): void {
  for (let i = 0; i < out.length; i++) out[i] = (out[i] as number) + (y[i] as number);
}
