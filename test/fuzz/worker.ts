/**
 * The fuzzer's child process: runs cases of one target and reports each on stdout, one JSON line
 * per event, so the parent (run.ts) knows which case was running if this process dies or hangs.
 *
 *   node dist/test/fuzz/worker.js --target NAME --seed S --from I --to J
 *   node dist/test/fuzz/worker.js --target NAME --replay FILE
 */
import { readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { caseSeed, FuzzRng } from './mutate.js';
import { judge, makeScratch, prepareTargets, targetNamed } from './targets.js';

/** A case that raises the process's peak memory by more than this is a finding. */
export const PEAK_GROWTH_LIMIT_MB = 512;

export type WorkerEvent =
  | { readonly event: 'start'; readonly index: number }
  | { readonly event: 'ok'; readonly index: number; readonly ms: number }
  | { readonly event: 'finding'; readonly index: number; readonly why: string };

function emit(e: WorkerEvent): void {
  process.stdout.write(`${JSON.stringify(e)}\n`);
}

function peakMB(): number {
  return process.resourceUsage().maxRSS / 1024; // kilobytes on Linux and macOS
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { target: { type: 'string' }, seed: { type: 'string' }, from: { type: 'string' }, to: { type: 'string' }, replay: { type: 'string' }, scratch: { type: 'string' } },
  });
  const target = targetNamed(values.target ?? '');
  await prepareTargets();
  // run.ts gives a folder it removes itself; run alone, the worker makes and removes its own.
  const scratch = values.scratch ?? makeScratch();
  let current = -1;
  // What escapes a case's promise (an error thrown in a callback, a rejection nobody awaits) is a finding too.
  const escaped = (error: unknown) => {
    emit({ event: 'finding', index: current, why: `escaped the promise: ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}` });
    process.exit(3);
  };
  process.on('uncaughtException', escaped);
  process.on('unhandledRejection', escaped);
  const runCase = async (index: number, input: Uint8Array | null, rng: FuzzRng): Promise<void> => {
    current = index;
    emit({ event: 'start', index });
    const before = peakMB();
    const started = performance.now();
    let why: string | null = null;
    try {
      await target.run(input, rng, scratch);
    } catch (error) {
      why = judge(error);
    }
    const growth = peakMB() - before;
    if (why === null && growth > PEAK_GROWTH_LIMIT_MB) why = `peak memory grew by ${growth.toFixed(0)} MB in one case`;
    emit(why !== null ? { event: 'finding', index, why } : { event: 'ok', index, ms: performance.now() - started });
  };
  try {
    if (values.replay !== undefined) {
      // A saved case: its own bytes, and for the rest (backend, prompt) the generator of seed 0.
      await runCase(0, readFileSync(values.replay), new FuzzRng(0));
    } else {
      const seed = Number(values.seed ?? 1);
      const from = Number(values.from ?? 0);
      const to = Number(values.to ?? from + 1);
      for (let index = from; index < to; index++) {
        const rng = new FuzzRng(caseSeed(seed, index));
        await runCase(index, target.make(rng), rng);
      }
    }
  } finally {
    if (values.scratch === undefined) rmSync(scratch, { recursive: true, force: true });
  }
  process.exit(0); // models cached by the api target need no orderly goodbye
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv.includes('--target')) {
  void main();
}
