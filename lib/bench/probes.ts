/**
 * What this machine can do at most, measured by the native engine's probes in the same run as the
 * benchmark: the FMA peak (register-only loop) and the memory read bandwidth, so GEMM can be
 * judged as a fraction of the first and decoding (weight bytes × tokens/s) of the second.
 */
import { loadAddon, type Addon, type AddonIsa } from '../backends/native/binding.js';

export interface MachineProbes {
  /** The instruction set the probes and the native engine use. */
  readonly isa: AddonIsa;
  /** GFLOP/s of register-only FMAs on `threads` threads. */
  fmaPeak(threads: number): number;
  /** GB/s reading a buffer of `megabytes` on `threads` threads. */
  readBandwidth(megabytes: number, threads: number): number;
  /** GFLOP/s of the native GEMM, out (M, N) = x (M, K) · W (N, K)^T. */
  gemm(M: number, N: number, K: number, threads: number): number;
}

export function nativeProbes(): MachineProbes | null {
  const { addon } = loadAddon();
  if (addon === null) return null;
  return probesOf(addon);
}

function probesOf(addon: Addon): MachineProbes {
  const isa = (process.env['MICROGPT_ISA'] || addon.cpu().best) as AddonIsa;
  const t = addon.testing;
  return {
    isa,
    fmaPeak: (threads) => t.benchFmaPeak(isa, threads, 10_000_000),
    readBandwidth: (megabytes, threads) => t.benchReadBandwidth(isa, megabytes, threads, Math.max(3, Math.round(4096 / megabytes))),
    gemm: (M, N, K, threads) => {
      const reps = Math.max(3, Math.round(2e10 / (2 * M * N * K))); // about 20 GFLOP of work
      return (2 * M * N * K) / t.benchMatmul(isa, M, K, N, threads, reps) / 1e9;
    },
  };
}
