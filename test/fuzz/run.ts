/**
 * The fuzzer: seeded mutation of every file format we read (safetensors, the zip of a ckpt.pt,
 * its pickle and storages, meta.pkl) and of the API's arguments and lifecycles. Cases run in a
 * child process (worker.ts) watched from here, so a crash, an abort or a hang is caught and
 * attributed to its case; findings are saved as regression fixtures that test/fuzz.test.ts replays.
 *
 *   npm run fuzz                                         # 10 minutes over every target
 *   node dist/test/fuzz/run.js --seconds 60 --target pickle --seed 7
 *   node dist/test/fuzz/run.js --replay test/fixtures/fuzz/zip/1-123.bin
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { caseSeed, FuzzRng } from './mutate.js';
import { prepareTargets, TARGETS, targetNamed } from './targets.js';
import type { WorkerEvent } from './worker.js';

const WORKER = fileURLToPath(new URL('./worker.js', import.meta.url));

export interface Finding {
  readonly target: string;
  readonly seed: number;
  readonly index: number;
  readonly why: string;
  /** Where the case was saved, when it was. */
  readonly saved?: string;
}

export interface FuzzOptions {
  readonly targets?: readonly string[];
  readonly seed: number;
  /** Cases per target (a fixed budget, the same cases on every machine), or ... */
  readonly cases?: number;
  /** ... a time budget shared by the targets. */
  readonly seconds?: number;
  /** Where findings are saved as regression fixtures (default: not saved). */
  readonly saveDir?: string;
  /** A case running longer than this is a hang (default 30 s: cases take milliseconds). */
  readonly caseTimeoutMs?: number;
  readonly log?: (line: string) => void;
}

export interface FuzzReport {
  readonly findings: Finding[];
  /** Cases run, by target. */
  readonly cases: Record<string, number>;
  /** The slowest case of each target, in milliseconds. */
  readonly slowestMs: Record<string, number>;
}

interface Segment {
  /** Cases that completed (ok or finding). */
  done: number;
  /** The case that was running when the worker stopped without finishing it, if any. */
  stuck: { index: number; why: string } | null;
  findings: { index: number; why: string }[];
  slowestMs: number;
}

/** Runs cases [from, to) of one target in one worker, until they end or the worker dies. */
function runSegment(target: string, seed: number, from: number, to: number, caseTimeoutMs: number, args: string[] = []): Promise<Segment> {
  return new Promise((resolve) => {
    // The worker's files live in a folder of ours, removed here even when the worker was killed.
    const scratch = mkdtempSync(join(tmpdir(), 'microgpt-fuzz-'));
    const child = spawn(process.execPath, [WORKER, '--target', target, '--seed', String(seed), '--from', String(from), '--to', String(to), '--scratch', scratch, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const segment: Segment = { done: 0, stuck: null, findings: [], slowestMs: 0 };
    let running: number | null = null;
    let hung = false;
    let stderr = '';
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        hung = true;
        child.kill('SIGKILL');
      }, caseTimeoutMs);
    };
    arm();
    child.stderr.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString('utf8')).slice(-4000);
    });
    createInterface({ input: child.stdout }).on('line', (line) => {
      let e: WorkerEvent;
      try {
        e = JSON.parse(line) as WorkerEvent;
      } catch {
        return; // something a case printed
      }
      arm();
      if (e.event === 'start') running = e.index;
      else {
        running = null;
        segment.done++;
        if (e.event === 'finding') segment.findings.push({ index: e.index, why: e.why });
        else segment.slowestMs = Math.max(segment.slowestMs, e.ms);
      }
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      rmSync(scratch, { recursive: true, force: true });
      if (running !== null) {
        const why = hung
          ? `hang: case still running after ${caseTimeoutMs / 1000} s`
          : `the process died (${signal ?? `exit ${code}`}): ${stderr.trim().split('\n').slice(-6).join(' | ')}`;
        // A finding the worker reported just before exiting (an escaped error) says more.
        const reported = segment.findings.find((f) => f.index === running);
        if (reported === undefined) segment.stuck = { index: running, why };
      } else if (code !== 0 && segment.done === 0) {
        segment.stuck = { index: from, why: `the worker failed to start (${signal ?? `exit ${code}`}): ${stderr.trim().slice(-1000)}` };
      }
      resolve(segment);
    });
  });
}

/** Saves a finding's case so that it replays on its own. */
function save(saveDir: string, target: string, seed: number, index: number): string {
  const dir = join(saveDir, target);
  mkdirSync(dir, { recursive: true });
  const input = targetNamed(target).make(new FuzzRng(caseSeed(seed, index)));
  if (input === null) {
    // A call case has no bytes: it replays from its seed and index only while the generator is
    // unchanged, so make it a test of its own (test/boundary.test.ts) once it is understood.
    const path = join(dir, `${seed}-${index}.json`);
    writeFileSync(path, `${JSON.stringify({ seed, index })}\n`);
    return path;
  }
  const path = join(dir, `${seed}-${index}.bin`);
  writeFileSync(path, input);
  return path;
}

export async function runFuzz(options: FuzzOptions): Promise<FuzzReport> {
  const targets = options.targets ?? TARGETS.map((t) => t.name);
  for (const name of targets) targetNamed(name);
  await prepareTargets();
  const caseTimeoutMs = options.caseTimeoutMs ?? 30_000;
  const log = options.log ?? (() => undefined);
  const report: FuzzReport = { findings: [], cases: {}, slowestMs: {} };
  const deadline = options.seconds === undefined ? Infinity : Date.now() + options.seconds * 1000;
  for (const [t, target] of targets.entries()) {
    // In time mode each target gets an equal share of what is left, in segments of 200 cases.
    const targetDeadline = options.seconds === undefined ? Infinity : Date.now() + (deadline - Date.now()) / (targets.length - t);
    const total = options.cases ?? Infinity;
    let index = 0;
    let slowest = 0;
    while (index < total && Date.now() < targetDeadline) {
      const to = Math.min(total, index + 200);
      const segment = await runSegment(target, options.seed, index, to, caseTimeoutMs);
      slowest = Math.max(slowest, segment.slowestMs);
      const found = [...segment.findings, ...(segment.stuck === null ? [] : [segment.stuck])];
      for (const f of found) {
        const saved = options.saveDir === undefined ? undefined : save(options.saveDir, target, options.seed, f.index);
        const finding: Finding = { target, seed: options.seed, index: f.index, why: f.why, ...(saved === undefined ? {} : { saved }) };
        report.findings.push(finding);
        log(`finding: ${target} case ${f.index} (seed ${options.seed}): ${f.why.split('\n')[0]}${saved === undefined ? '' : ` -> ${saved}`}`);
      }
      // Past a dead or hung case, go on with the next one.
      index = segment.stuck === null ? index + segment.done : segment.stuck.index + 1;
      if (segment.done === 0 && segment.stuck === null) break; // nothing ran: do not spin
    }
    report.cases[target] = index;
    report.slowestMs[target] = slowest;
    log(`${target}: ${index} cases, slowest ${slowest.toFixed(0)} ms`);
  }
  return report;
}

/** Replays a saved finding; returns why it still fails, or null. */
export async function replay(path: string, caseTimeoutMs = 30_000): Promise<string | null> {
  const target = basename(dirname(path));
  targetNamed(target);
  let segment: Segment;
  if (path.endsWith('.json')) {
    const { readFileSync } = await import('node:fs');
    const { seed, index } = JSON.parse(readFileSync(path, 'utf8')) as { seed: number; index: number };
    segment = await runSegment(target, seed, index, index + 1, caseTimeoutMs);
  } else {
    segment = await runSegment(target, 0, 0, 1, caseTimeoutMs, ['--replay', path]);
  }
  const why = segment.stuck?.why ?? segment.findings[0]?.why ?? null;
  return why ?? (segment.done === 1 ? null : 'the case did not run');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string' },
      cases: { type: 'string' },
      seed: { type: 'string' },
      target: { type: 'string', multiple: true },
      save: { type: 'string' },
      replay: { type: 'string' },
    },
  });
  const log = (line: string) => process.stderr.write(`fuzz: ${line}\n`);
  if (values.replay !== undefined) {
    const why = await replay(values.replay);
    log(why === null ? `${values.replay}: passes` : `${values.replay}: ${why}`);
    process.exitCode = why === null ? 0 : 1;
    return;
  }
  const seed = values.seed === undefined ? Date.now() % 2 ** 31 : Number(values.seed);
  const report = await runFuzz({
    seed,
    ...(values.target === undefined ? {} : { targets: values.target }),
    ...(values.cases === undefined ? { seconds: Number(values.seconds ?? 600) } : { cases: Number(values.cases) }),
    saveDir: values.save ?? fileURLToPath(new URL('../../../test/fixtures/fuzz/', import.meta.url)),
    log,
  });
  log(`seed ${seed}: ${Object.values(report.cases).reduce((a, b) => a + b, 0)} cases, ${report.findings.length} findings`);
  process.exitCode = report.findings.length === 0 ? 0 : 1;
}

// Run as a command only: not when a test runner loads the file.
if (process.argv[1] === fileURLToPath(import.meta.url) && process.env['NODE_TEST_CONTEXT'] === undefined) {
  void main();
}
