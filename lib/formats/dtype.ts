/**
 * Conversions of stored floating-point tensors to the float32 the backends compute in.
 * Checkpoint bytes are little-endian (PyTorch and safetensors both write them so).
 */

/** Element types a checkpoint may store weights in, by their safetensors names. */
export type StoredDType = 'F32' | 'F16' | 'BF16' | 'F64';

export const DTYPE_BYTES: Readonly<Record<StoredDType, number>> = { F32: 4, F16: 2, BF16: 2, F64: 8 };

// float16 → float32 by table: 65,536 entries are cheap and exact (subnormals, ±inf, NaN included).
let halfTable: Float32Array | null = null;

function halfToFloatTable(): Float32Array {
  if (halfTable !== null) return halfTable;
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const mantissa = h & 0x3ff;
    let value: number;
    if (exponent === 0) value = mantissa * 2 ** -24; // zero and subnormals
    else if (exponent === 31) value = mantissa === 0 ? Infinity : NaN;
    else value = (1 + mantissa / 1024) * 2 ** (exponent - 15);
    table[h] = sign * value;
  }
  halfTable = table;
  return table;
}

/**
 * Decodes `count` elements of `dtype` starting at `byteOffset` of `bytes` into a new Float32Array.
 * The caller has checked that the range lies inside `bytes`.
 */
export function decodeToFloat32(bytes: Uint8Array, byteOffset: number, count: number, dtype: StoredDType): Float32Array {
  // A caller's slip must not read zeros past the end (the F32 copy would) or allocate for nothing.
  if (!Number.isSafeInteger(byteOffset) || !Number.isSafeInteger(count) || byteOffset < 0 || count < 0 || byteOffset + count * DTYPE_BYTES[dtype] > bytes.length) {
    throw new RangeError(`decodeToFloat32: ${count} ${dtype} elements at byte ${byteOffset} do not lie inside ${bytes.length} bytes`);
  }
  const out = new Float32Array(count);
  const start = bytes.byteOffset + byteOffset;
  const view = new DataView(bytes.buffer, start, count * DTYPE_BYTES[dtype]);
  switch (dtype) {
    case 'F32':
      // A byte copy is both the fastest path and independent of the source's alignment.
      new Uint8Array(out.buffer).set(bytes.subarray(byteOffset, byteOffset + count * 4));
      break;
    case 'F64':
      for (let i = 0; i < count; i++) out[i] = view.getFloat64(i * 8, true);
      break;
    case 'F16': {
      const table = halfToFloatTable();
      for (let i = 0; i < count; i++) out[i] = table[view.getUint16(i * 2, true)] as number;
      break;
    }
    case 'BF16': {
      // bfloat16 is the top half of a float32.
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) bits[i] = view.getUint16(i * 2, true) << 16;
      break;
    }
  }
  return out;
}

/** Rounds float32 values to IEEE float16 (round to nearest even) and returns the raw bits. */
export function encodeFloat16(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  for (let i = 0; i < values.length; i++) {
    f32[0] = values[i] as number;
    const x = u32[0] as number;
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
      continue;
    }
    const e = exp - 127 + 15;
    if (e >= 31) {
      out[i] = sign | 0x7c00;
      continue;
    }
    if (e <= 0) {
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      mant |= 0x800000;
      const shift = 14 - e;
      const half = 1 << (shift - 1);
      let h = mant >>> shift;
      const rest = mant & ((1 << shift) - 1);
      if (rest > half || (rest === half && (h & 1) === 1)) h++;
      out[i] = sign | h;
      continue;
    }
    let h = (e << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++; // may carry into the exponent: correct
    out[i] = sign | h;
  }
  return out;
}

/** float32 values rounded to the nearest IEEE float16 and widened back (a new array). */
export function roundToFloat16(values: Float32Array): Float32Array {
  const bits = encodeFloat16(values);
  return decodeToFloat32(new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength), 0, values.length, 'F16');
}

/** Rounds float32 values to bfloat16 (round to nearest even) and returns the raw bits. */
export function encodeBFloat16(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < values.length; i++) {
    const x = bits[i] as number;
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) {
      out[i] = (x >>> 16) | 0x40; // keep NaN a NaN
      continue;
    }
    const rounded = x + 0x7fff + ((x >>> 16) & 1);
    out[i] = (rounded >>> 16) & 0xffff;
  }
  return out;
}
